"""CPU kernels (every ISA path) against the float64 reference on awkward shapes."""
import pytest
import torch

from helpers import random_hub_layer, rel_err
from slimformer import QuantLinear
from slimformer.gptq import format as F

# (bits, K, N, group_size): K and N not multiples of 64 where the format allows it; per-channel; a short last group.
CASES = [
    (4, 200, 72, 32), (4, 200, 72, 64), (4, 200, 72, 128), (4, 200, 72, -1),
    (4, 256, 40, 128), (3, 160, 96, 32), (3, 160, 96, 64), (3, 224, 32, 128), (3, 160, 96, -1),
    (2, 96, 48, 32), (8, 72, 24, -1),
]
ROWS = [1, 2, 3, 5, 15, 16, 17, 33, 130]


def _layer(bits, K, N, gs, act_order, cf):
    hub, _, _ = random_hub_layer(K, N, bits, gs, act_order=act_order, checkpoint_format=cf)
    layer = QuantLinear.from_gptq(**hub, bits=bits, group_size=gs, checkpoint_format=cf)
    return layer, hub


@pytest.fixture(params=["fused", "tiled"])
def m_path(request, monkeypatch):
    """Forces the fused small-M kernel or the dequantize-tiles + dense GEMM path for every row count."""
    monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", "100000" if request.param == "fused" else "1")
    return request.param


@pytest.mark.parametrize("bits,K,N,gs", CASES)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("cf", ["gptq", "gptq_v2"])
def test_fp32_matches_float64_reference(cpu_isa, m_path, bits, K, N, gs, act_order, cf):
    layer, hub = _layer(bits, K, N, gs, act_order, cf)
    kgs = F.resolve_group_size(gs, K)
    for M in ROWS:
        x = torch.randn(M, K)
        ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=kgs, in_features=K, out_features=N,
                               checkpoint_format=cf)
        y = layer(x)
        assert y.dtype == torch.float32 and y.shape == (M, N)
        assert rel_err(y, ref) < 2e-5, (M, rel_err(y, ref))


@pytest.mark.parametrize("bits,K,N,gs", [(4, 200, 72, 128), (3, 160, 96, 32), (4, 256, 40, -1)])
@pytest.mark.parametrize("act_order", [False, True])
def test_bf16_activations(cpu_isa, m_path, bits, K, N, gs, act_order):
    layer, hub = _layer(bits, K, N, gs, act_order, "gptq")
    kgs = F.resolve_group_size(gs, K)
    for M in (1, 4, 16, 40):
        x = torch.randn(2, M, K).to(torch.bfloat16)  # leading batch dim too
        ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=kgs, in_features=K, out_features=N)
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (2, M, N)
        assert rel_err(y, ref) < 8e-3  # bf16 output rounding (2^-9) dominates; compute is fp32
        # bf16 activations are widened exactly and computed in fp32: the only loss is the final rounding
        assert torch.equal(y, layer(x.float()).to(torch.bfloat16))


def test_small_and_large_m_paths_agree(monkeypatch):
    layer, _ = _layer(4, 256, 96, 64, True, "gptq_v2")
    x = torch.randn(24, 256)
    monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", "1000")
    fused = layer(x)
    monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", "1")
    tiled = layer(x)
    assert rel_err(fused, tiled) < 1e-6


def test_non_contiguous_activations(cpu_isa):
    layer, hub = _layer(4, 128, 64, 32, False, "gptq")
    x = torch.randn(128, 6).t()  # non-contiguous [6, 128]
    ref = F.reference_gemm(x.double(), **hub, bits=4, group_size=32, in_features=128, out_features=64)
    assert rel_err(layer(x), ref) < 2e-5


def test_empty_batch():
    layer, _ = _layer(4, 64, 32, 32, False, "gptq")
    assert layer(torch.randn(0, 64)).shape == (0, 32)


def test_dequantize_matches_reference(cpu_isa):
    for bits, K, N, gs in [(4, 200, 72, 32), (3, 160, 96, -1)]:
        layer, hub = _layer(bits, K, N, gs, True, "gptq_v2")
        W = F.reference_dequantize(**{k: hub[k] for k in ("qweight", "qzeros", "scales", "g_idx")}, bits=bits,
                                   group_size=F.resolve_group_size(gs, K), in_features=K, out_features=N,
                                   checkpoint_format="gptq_v2")
        assert rel_err(layer.dequantize(), W.t()) < 1e-6


@pytest.mark.parametrize("bits", [3, 4])
def test_flush_denormal_mode_does_not_change_results(cpu_isa, bits):
    # The SIMD paths read integers as denormal floats; they must clear DAZ for themselves.
    layer, hub = _layer(bits, 160, 96, 32, False, "gptq_v2")
    x = torch.randn(3, 160)
    ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=32, in_features=160, out_features=96,
                           checkpoint_format="gptq_v2")
    assert torch.set_flush_denormal(True)
    try:
        y = layer(x)
    finally:
        torch.set_flush_denormal(False)
    assert rel_err(y, ref) < 2e-5


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e6, 1e20])
def test_activation_magnitudes(cpu_isa, scale):
    # The per-row exponent of the prescale adapts to each row's magnitude: tiny, huge and all-zero rows stay exact.
    layer, hub = _layer(4, 128, 64, 32, True, "gptq")
    x = torch.randn(4, 128) * scale
    x[1] = torch.randn(128)  # rows of very different magnitude in one call
    ref = F.reference_gemm(x.double(), **hub, bits=4, group_size=32, in_features=128, out_features=64)
    y = layer(x)
    for m in range(4):
        if ref[m].norm() == 0:
            assert torch.all(y[m] == 0)
        else:
            assert rel_err(y[m], ref[m]) < 2e-5, (m, rel_err(y[m], ref[m]))
