"""The opt-in int8 activation mode (4-bit weights, CPU): kernel against its float64 spec on every ISA path and
awkward shapes, exactness when the activations are already on the int8 grid, fallbacks, bad input, the module
API and opcheck."""
import numpy as np
import pytest
import torch

from helpers import random_hub_layer, rel_err
from slimformer import QuantLinear, ops, set_activation_mode
from slimformer.gptq import format as F

# (K, N, group_size): K not a multiple of 64, N not of 32, per-channel, a short last group, groups of 32 and 64
# (blocks shorter than 128), and K > 128 per group (two blocks per group).
CASES = [(200, 72, 32), (200, 72, 64), (200, 72, 128), (200, 72, -1), (256, 40, 128), (384, 48, 256)]
ROWS = [1, 2, 3, 5, 7, 17, 130]  # from 7 rows: the many-row kernel, with 3-, 1- and 2-row tails


def _layer(K, N, gs, act_order, cf="gptq", bias=True):
    hub, _, _ = random_hub_layer(K, N, 4, gs, act_order=act_order, checkpoint_format=cf, bias=bias)
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=gs, checkpoint_format=cf)
    layer.activation_mode = "int8"
    return layer


def _spec(layer, x):
    b = layer._buffers
    return F.reference_tiled_gemm_a8(x, b["qtiles"], b["scale_zero"], b["perm"], b["bias"], bits=4,
                                     group_size=layer.kernel_group_size, in_features=layer.in_features,
                                     out_features=layer.out_features)


@pytest.mark.parametrize("K,N,gs", CASES)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_spec(cpu_isa, K, N, gs, act_order, dtype):
    layer = _layer(K, N, gs, act_order, cf="gptq_v2" if act_order else "gptq")
    for M in ROWS:
        x = (torch.randn(M, K) * torch.logspace(-2, 1, K)).to(dtype)  # blocks with very different ranges
        y = layer(x)
        assert y.dtype == dtype and y.shape == (M, N)
        ref = _spec(layer, x)
        if dtype == torch.float32:
            # fp32 folding of exact integer block sums: a few ulps of the largest partial sum
            scale = _spec(layer, x.abs()).abs().max().clamp_min(1e-30)
            assert (y.double() - ref.double()).abs().max() / scale < 1e-5, (M, cpu_isa)
        else:  # bf16 output: the kernel and the spec round the same fp32-accurate value to bf16
            assert rel_err(y, ref) < 4e-3, (M, cpu_isa)


def test_exact_when_activations_are_on_the_int8_grid(cpu_isa):
    """x already of the form x8 * amax / 127 with |x8| <= 127 and a 127 in every block: nothing is rounded, so the
    int8 mode equals the exact mode to fp32 accuracy."""
    K, N = 256, 64
    layer = _layer(K, N, 128, False)
    x8 = torch.randint(-127, 128, (4, K)).float()
    x8[:, 0], x8[:, 128] = 127, -127
    s = torch.tensor([0.5, 0.25, 2.0, 1.0]).unsqueeze(1)  # amax = 127 * s: inv and scale are exact powers of 2
    x = x8 * s
    b = layer._buffers
    exact = F.reference_tiled_gemm(x.double(), b["qtiles"], b["scale_zero"], None, b["bias"], bits=4,
                                   group_size=128, in_features=K, out_features=N)
    assert rel_err(layer(x), exact) < 1e-6


def test_accuracy_cost_is_bounded():
    """Not a spec, a guard: on Gaussian activations with outlier channels the int8 mode stays within a few
    percent of the exact result (benchmarks/README.md reports the measured cost)."""
    K, N = 512, 256
    layer = _layer(K, N, 128, False)
    x = torch.randn(8, K)
    x[:, ::97] *= 20  # outlier channels, as in LLM activations
    y8 = layer(x)
    layer.activation_mode = "exact"
    err = rel_err(y8, layer(x))
    assert 1e-4 < err < 0.05


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_activations_use_the_exact_path(cpu_isa, bad):
    layer = _layer(128, 32, 64, False)
    x = torch.randn(3, 128)
    x[1, 5] = bad
    y = layer(x)
    layer.activation_mode = "exact"
    torch.testing.assert_close(y, layer(x), equal_nan=True)


def test_scalar_and_default_paths_match_the_spec(monkeypatch):
    layer = _layer(256, 96, 128, True)
    x = torch.randn(5, 256)
    ref = _spec(layer, x.double()).double()
    monkeypatch.setenv("SLIMFORMER_CPU_ISA", "scalar")
    assert rel_err(layer(x), ref) < 1e-6
    monkeypatch.delenv("SLIMFORMER_CPU_ISA")
    assert rel_err(layer(x), ref) < 1e-6


def test_module_api():
    hub, _, _ = random_hub_layer(128, 64, 4, 32)
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=32)
    assert layer.activation_mode == "exact" and "activation_mode" not in repr(layer)
    sd = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.activation_mode = "int8"
    assert "activation_mode='int8'" in repr(layer)
    assert sd.keys() == layer.state_dict().keys()  # the mode is not saved
    with pytest.raises(ValueError, match="activation_mode must be one of"):
        layer.activation_mode = "int4"
    int3 = QuantLinear.from_gptq(**random_hub_layer(64, 32, 3, 32)[0], bits=3, group_size=32)
    with pytest.raises(ValueError, match="needs 4-bit weights"):
        int3.activation_mode = "int8"
    model = torch.nn.Sequential(layer, torch.nn.ReLU(), int3)
    layer.activation_mode = "exact"
    assert set_activation_mode(model, "int8") == 1
    assert layer.activation_mode == "int8" and int3.activation_mode == "exact"
    assert set_activation_mode(model, "exact") == 2 and layer.activation_mode == "exact"
    with pytest.raises(ValueError, match="mode must be one of"):
        set_activation_mode(model, "fp8")


def test_bad_input():
    layer = _layer(128, 64, 32, False)
    b = layer._buffers
    args = (b["qtiles"], b["scale_zero"], None, b["bias"])
    with pytest.raises(RuntimeError, match="needs 4-bit weights"):
        torch.ops.slimformer.gptq_gemm_a8(torch.randn(2, 128), *args, 8, 32, 128, 64)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        layer(torch.randn(2, 128, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"x must have shape \[\.\.\., 128\]"):
        layer(torch.randn(2, 100))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    layer = _layer(128, 64, 32, True)
    x = torch.randn(3, 128).to(dtype)
    torch.library.opcheck(torch.ops.slimformer.gptq_gemm_a8.default,
                          (x, layer.qtiles, layer.scale_zero, layer.perm, layer.bias, 4, 32, 128, 64))


def test_torch_compile_fullgraph():
    layer = _layer(128, 64, 32, False)
    model = torch.nn.Sequential(layer, torch.nn.GELU())
    x = torch.randn(2, 128)
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


def test_reference_fallback_matches_kernel():
    layer = _layer(200, 72, 64, True)
    x = torch.randn(3, 200)
    b = layer._buffers
    torch.testing.assert_close(layer(x), F.reference_tiled_gemm_a8(x, b["qtiles"], b["scale_zero"], b["perm"],
                                                                   b["bias"], bits=4, group_size=64,
                                                                   in_features=200, out_features=72),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("rows", [2, 8])  # the few-row and the many-row kernel
def test_largest_integer_sums_do_not_overflow(cpu_isa, sign, rows):
    """Every weight 15 and every activation at +-amax: each 16-bit lane reaches the largest sum the kernel allows
    before widening (4 words: 30480); one more word would wrap."""
    K, N = 256, 32
    q = torch.full((K, N), 15, dtype=torch.int32)
    layer = QuantLinear.from_int(q, torch.ones(1, N, dtype=torch.float16), torch.zeros(1, N, dtype=torch.int32),
                                 bits=4, group_size=-1, checkpoint_format="gptq_v2")
    layer.activation_mode = "int8"
    x = torch.full((rows, K), sign)
    torch.testing.assert_close(layer(x), torch.full((rows, N), sign * 15 * K))


def test_activation_quantization_spec_is_float32_exact():
    """quantize_activations_a8 (the spec the kernels are tested against) forms 127 / amax as one correctly rounded
    fp32 division, as the kernel does; torch's `127.0 / tensor` (reciprocal, then times 127) differs in the last
    bit for ~1 value in 4, and the rounded x8 then for about 1 configuration in 400."""
    g = torch.Generator().manual_seed(1)
    K = 128
    amax = torch.rand(2000, 1, generator=g) * 10 + 1e-3
    j = torch.randint(-126, 126, (2000, K), generator=g).float()
    x = (amax * (j + 0.5)) / 127  # halfway between two int8 steps: where the last bit of 127 / amax decides
    x[:, 0] = amax[:, 0]
    x8, scale = F.quantize_activations_a8(x, group_size=K, in_features=K)
    xn, an = x.numpy(), amax.numpy()
    inv = np.float32(127) / an
    assert np.array_equal(x8.numpy(), np.rint(xn * inv))
    assert np.array_equal(scale[:, :1].numpy(), an / np.float32(127))
