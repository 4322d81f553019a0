"""QuantLinear: builders, Hub state_dict round trips, accuracy against float64, and bad input."""
import pytest
import torch

from helpers import random_hub_layer, rel_err
from slimformer import QuantLinear, ops
from slimformer.gptq import format as F


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("cf", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("gs", [128, -1])
def test_from_gptq_matches_float64_reference(bits, cf, act_order, gs):
    K, N = 512, 96
    hub, _, _ = random_hub_layer(K, N, bits, gs, act_order=act_order, checkpoint_format=cf)
    layer = QuantLinear.from_gptq(**hub, bits=bits, group_size=gs, checkpoint_format=cf)
    x = torch.randn(7, K)
    ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=F.resolve_group_size(gs, K), in_features=K,
                           out_features=N, checkpoint_format=cf)
    assert rel_err(layer(x), ref) < 2e-4


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("cf", ["gptq", "gptq_v2"])
def test_state_dict_is_hub_layout_and_round_trips(act_order, cf):
    hub, _, _ = random_hub_layer(256, 64, 3, 64, act_order=act_order, checkpoint_format=cf)
    layer = QuantLinear.from_gptq(**hub, bits=3, group_size=64, checkpoint_format=cf)
    sd = layer.state_dict()
    assert set(sd) == {"qweight", "qzeros", "scales", "g_idx", "bias"}
    for k, v in hub.items():
        assert torch.equal(sd[k], v.to(sd[k].dtype)), k
    fresh = QuantLinear(256, 64, bits=3, group_size=64, checkpoint_format=cf)
    fresh.load_state_dict(sd)
    x = torch.randn(5, 256)
    assert torch.equal(fresh(x), layer(x))
    assert fresh.extra_repr() == layer.extra_repr()


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "to_bf16", "to_cpu_bf16"])
def test_dtype_casts_of_the_model_leave_the_quantized_tensors_alone(cast):
    # model.half() / model.to(torch.bfloat16) on a model holding QuantLinear layers: the GPTQ tensors (integers,
    # fp16 scales, the kernel layout) must keep their dtypes and values, and the layer then runs in that dtype.
    hub, _, _ = random_hub_layer(256, 64, 4, 64, act_order=True, checkpoint_format="gptq")
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=64)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), layer)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    kernel = {k: v.clone() for k, v in layer._buffers.items() if v is not None}
    x = torch.randn(3, 256)
    y_ref = layer(x)
    {"half": lambda: model.half(), "bfloat16": lambda: model.bfloat16(), "double": lambda: model.double(),
     "to_bf16": lambda: model.to(torch.bfloat16), "to_cpu_bf16": lambda: model.to("cpu", torch.bfloat16)}[cast]()
    assert model[0].weight.dtype != torch.float32  # the dense layer was cast
    for k, v in layer._buffers.items():
        if v is not None:
            assert v.dtype == kernel[k].dtype and torch.equal(v, kernel[k]), k
    for k, v in layer.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert torch.equal(layer(x), y_ref)
    if cast in ("bfloat16", "to_bf16", "to_cpu_bf16"):
        yb = layer(x.bfloat16())
        assert yb.dtype == torch.bfloat16 and rel_err(yb, y_ref) < 8e-3


def test_from_linear_rtn_close_to_dense():
    lin = torch.nn.Linear(256, 128)
    for bits, tol in ((4, 0.12), (3, 0.25)):
        for sym in (True, False):
            q = QuantLinear.from_linear(lin, bits=bits, group_size=64, sym=sym)
            x = torch.randn(9, 256)
            assert rel_err(q(x), lin(x).detach()) < tol
            assert q.dequantize().shape == lin.weight.shape
    assert "bits=3, group_size=64" in repr(q)


def test_missing_qweight_in_state_dict():
    layer = QuantLinear(64, 32, bits=4, group_size=32)
    sd = layer.state_dict()
    del sd["qweight"]
    with pytest.raises(RuntimeError, match="qweight"):
        layer.load_state_dict(sd)


def test_mismatched_state_dict_shapes():
    layer = QuantLinear(64, 32, bits=4, group_size=32)
    sd = layer.state_dict()
    sd["scales"] = torch.zeros(3, 32, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="scales"):
        layer.load_state_dict(sd)
    sd = layer.state_dict()
    sd["qweight"] = torch.zeros(4, 32, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="qweight must have shape"):
        layer.load_state_dict(sd)


def test_bad_hub_tensors():
    hub, _, _ = random_hub_layer(128, 64, 4, 32)
    with pytest.raises(ValueError, match="bits must be one of"):
        QuantLinear.from_gptq(**hub, bits=5, group_size=32)
    with pytest.raises(ValueError, match="qzeros must have shape"):
        QuantLinear.from_gptq(**{**hub, "qzeros": hub["qzeros"][:2]}, bits=4, group_size=32)
    with pytest.raises(ValueError, match="scales must have shape"):
        QuantLinear.from_gptq(**{**hub, "scales": hub["scales"][:, :32]}, bits=4, group_size=32)
    with pytest.raises(ValueError, match="qweight must be torch.int32"):
        QuantLinear.from_gptq(**{**hub, "qweight": hub["qweight"].float()}, bits=4, group_size=32)
    with pytest.raises(ValueError, match="g_idx values"):
        QuantLinear.from_gptq(**{**hub, "g_idx": hub["g_idx"] + 10}, bits=4, group_size=32)
    with pytest.raises(ValueError, match="checkpoint_format"):
        QuantLinear.from_gptq(**hub, bits=4, group_size=32, checkpoint_format="awq")
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantLinear(100, 64, bits=3)
    with pytest.raises(ValueError, match="out_features must be a multiple of 32"):
        QuantLinear(64, 40, bits=3)


def test_bad_activations():
    hub, _, _ = random_hub_layer(128, 64, 4, 32)
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=32)
    with pytest.raises(RuntimeError, match=r"x must have shape \[\.\.\., 128\]"):
        layer(torch.randn(3, 127))
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        layer(torch.randn(3, 128).half())
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        layer(torch.randint(0, 3, (3, 128)))


def test_bad_kernel_arguments():
    hub, _, _ = random_hub_layer(128, 64, 4, 32)
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=32)
    x = torch.randn(2, 128)
    op = torch.ops.slimformer.gptq_gemm
    with pytest.raises(RuntimeError, match="bits must be one of"):
        op(x, layer.qtiles, layer.scale_zero, None, None, 5, 32, 128, 64)
    with pytest.raises(RuntimeError, match="qtiles must have shape"):
        op(x, layer.qtiles, layer.scale_zero, None, None, 4, 32, 128, 96)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x, layer.qtiles.transpose(0, 1).contiguous().transpose(0, 1), layer.scale_zero, None, None, 4, 32, 128,
           64)
    with pytest.raises(RuntimeError, match="scale_zero must be Half"):
        op(x, layer.qtiles, layer.scale_zero.float(), None, None, 4, 32, 128, 64)
    with pytest.raises(RuntimeError, match="group_size must be positive"):
        op(x, layer.qtiles, layer.scale_zero, None, None, 4, 0, 128, 64)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        op(x, layer.qtiles, layer.scale_zero, None, torch.zeros(3), 4, 32, 128, 64)
    with pytest.raises(RuntimeError, match="perm must have shape"):
        op(x, layer.qtiles, layer.scale_zero, torch.arange(64), None, 4, 32, 128, 64)


def test_bad_isa_request(monkeypatch):
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 32), bits=4, group_size=32)
    monkeypatch.setenv("SLIMFORMER_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="must be one of scalar, avx2, avx512, avx512vnni, avx512bf16, amx"):
        layer(torch.randn(1, 64))
    from conftest import ALL_ISAS, SUPPORTED_ISAS
    unsupported = [isa for isa in ALL_ISAS if isa not in SUPPORTED_ISAS]
    for isa in unsupported:  # none on a CPU with AMX; there the request must be honoured
        monkeypatch.setenv("SLIMFORMER_CPU_ISA", isa)
        with pytest.raises(RuntimeError, match="supports at most"):
            layer(torch.randn(1, 64))
    for isa in SUPPORTED_ISAS:
        monkeypatch.setenv("SLIMFORMER_CPU_ISA", isa)
        assert ops.cpu_isa() == isa


def test_state_dict_without_g_idx_loads_as_sequential_groups():
    hub, _, _ = random_hub_layer(128, 64, 4, 32)
    sd = {k: v for k, v in hub.items() if k != "g_idx"}
    layer = QuantLinear(128, 64, bits=4, group_size=32)
    layer.load_state_dict(sd)  # strict: g_idx is optional in older checkpoints
    ref = QuantLinear.from_gptq(**hub, bits=4, group_size=32)
    x = torch.randn(3, 128)
    assert torch.equal(layer(x), ref(x))


def test_bad_kernel_arguments_more():
    # the argument checks the review found untested, each by name
    hub, _, _ = random_hub_layer(128, 64, 4, 32, act_order=True)
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=32)
    x = torch.randn(2, 128)
    op = torch.ops.slimformer.gptq_gemm
    args = lambda **kw: [kw.get(k, v) for k, v in dict(x=x, qtiles=layer.qtiles, scale_zero=layer.scale_zero,
                                                         perm=layer.perm, bias=layer.bias).items()]
    with pytest.raises(RuntimeError, match="perm must be Long, got Int"):
        op(*args(perm=layer.perm.int()), 4, 32, 128, 64)
    bad = layer.perm.clone()
    bad[3] = 128
    with pytest.raises(RuntimeError, match=r"perm must be a permutation of \[0, 128\): perm\[3\] = 128 is out of range"):
        op(*args(perm=bad), 4, 32, 128, 64)
    bad[3] = bad[4]
    with pytest.raises(RuntimeError, match="appears twice"):
        op(*args(perm=bad), 4, 32, 128, 64)
    with pytest.raises(RuntimeError, match="qtiles must be Int, got Long"):
        op(*args(qtiles=layer.qtiles.long()), 4, 32, 128, 64)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[64\], got \[1, 64\]"):
        op(*args(bias=layer.bias[None]), 4, 32, 128, 64)
    with pytest.raises(RuntimeError, match="in_features must be a multiple of 32"):
        op(*args(), 3, 32, 120, 64)
    with pytest.raises(RuntimeError, match="group_size to be a multiple of 8"):
        op(*args(), 4, 20, 128, 64)
    # one tensor on another device (meta stands in for an accelerator here): named, never garbage
    for name in ("x", "scale_zero", "bias", "perm", "qtiles"):
        moved = getattr(layer, name, None) if name != "x" else x
        with pytest.raises(RuntimeError, match=f"one device.*{name} on meta"):
            op(*args(**{name: moved.to("meta")}), 4, 32, 128, 64)
    with pytest.raises(ValueError, match="g_idx must be an integer tensor"):
        QuantLinear.from_gptq(**{**hub, "g_idx": hub["g_idx"].float()}, bits=4, group_size=32)


def test_meta_layer_with_real_input_fails():
    # the fake (meta) kernel used to answer a CPU input with uninitialised memory
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 32), bits=4, group_size=32).to("meta")
    with pytest.raises(RuntimeError, match="one device"):
        layer(torch.randn(2, 64))
    assert layer(torch.randn(2, 64, device="meta")).shape == (2, 32)  # all-meta tracing still works
    with pytest.raises(ValueError, match="int8 activation mode runs on the CPU only; this layer is on meta"):
        layer.activation_mode = "int8"  # fails when set, not at the first forward


def test_from_linear_refuses_non_finite_weights():
    lin = torch.nn.Linear(64, 32)
    lin.weight.data[3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"weight holds NaN or inf values \(1 of 2048\)"):
        QuantLinear.from_linear(lin, bits=4, group_size=32)


def test_one_list_of_bit_widths():
    # The C++ list (kGptqBits, gptq_layout.h) and Python's format registry accept the same widths
    from slimformer.formats import FORMATS
    python_bits = sorted(f.bits for f in FORMATS.values() if f.name.startswith("gptq_"))
    native_bits = []
    for bits in range(1, 10):
        try:
            torch.ops.slimformer._unpack_bits(torch.zeros(3, 1, dtype=torch.int32), bits, 0)
            native_bits.append(bits)
        except RuntimeError as e:
            assert "bits must be one of 2, 3, 4, 8" in str(e)
    assert native_bits == python_bits == [2, 3, 4, 8]
