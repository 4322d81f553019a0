"""CPU kernels (every ISA path) against the float64 reference on awkward shapes."""
import pytest
import torch

from helpers import random_hub_layer, rel_err
from slimformer import QuantLinear
from slimformer.gptq import format as F

# (bits, K, N, group_size): K and N not multiples of 64 where the format allows it; per-channel; a short last group;
# groups of 256 (two integer-kernel blocks each) whose short last group leaves its second block empty.
CASES = [
    (4, 200, 72, 32), (4, 200, 72, 64), (4, 200, 72, 128), (4, 200, 72, -1),
    (4, 256, 40, 128), (3, 160, 96, 32), (3, 160, 96, 64), (3, 224, 32, 128), (3, 160, 96, -1),
    (2, 96, 48, 32), (8, 72, 24, -1), (4, 296, 40, 256), (3, 320, 32, 256),
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


@pytest.mark.parametrize("bits,K,N,gs", [(4, 200, 72, 128), (3, 160, 96, 32), (4, 256, 40, -1), (2, 96, 48, 32),
                                         (8, 72, 24, -1)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("int_path", ["auto", "never"])
def test_bf16_activations(cpu_isa, m_path, monkeypatch, bits, K, N, gs, act_order, int_path):
    # bf16 activations take the integer kernel ("auto"), or the float kernel ("never").
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", int_path)
    layer, hub = _layer(bits, K, N, gs, act_order, "gptq")
    kgs = F.resolve_group_size(gs, K)
    for M in (1, 4, 16, 40):
        x = torch.randn(2, M, K).to(torch.bfloat16)  # leading batch dim too
        x[0, 0, : K // 3] *= 1e-4  # leaves residuals for the integer kernel
        ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=kgs, in_features=K, out_features=N)
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (2, M, N)
        assert rel_err(y, ref) < 8e-3  # bf16 output rounding (2^-9) dominates; products are exact, sums fp32
        # bf16 activations are widened exactly, so both kernels agree with the fp32 computation up to the final
        # rounding: exactly on the float kernel, and within the rounding of a differently ordered sum otherwise:
        # two bf16 ulps of the output, plus a few fp32 ulps of the terms' magnitude sum |x| |W| for outputs that
        # nearly cancel (there the order of the fp32 additions decides the low bits of a tiny result).
        y32 = layer(x.float()).to(torch.bfloat16)
        if int_path == "never" or (m_path == "tiled" and not _amx_route(cpu_isa, bits, K, kgs)):
            assert torch.equal(y, y32)
        else:
            W = F.reference_dequantize(hub["qweight"], hub["qzeros"], hub["scales"], hub["g_idx"], bits=bits,
                                       group_size=kgs, in_features=K, out_features=N)
            terms = x.double().abs() @ W.abs()
            tol = y32.double().abs() * 2.0 ** -7 + terms * 2.0 ** -22
            assert torch.all((y.double() - y32.double()).abs() <= tol + 1e-30)


def _amx_route(cpu_isa, bits, K, kgs):
    """Whether bf16 activations take the AMX large-M route (past its row threshold): the amx level, 2- or 4-bit
    weights, K and the group size multiples of 32 (csrc/gptq/gptq_cpu_ops.cpp)."""
    return cpu_isa == "amx" and bits in (2, 4) and K % 32 == 0 and kgs % 32 == 0


@pytest.mark.parametrize("bits,K,N,gs", [(4, 256, 72, 32), (4, 512, 40, 128), (4, 320, 96, -1), (2, 256, 48, 64),
                                         (4, 384, 24, 128)])
@pytest.mark.parametrize("act_order", [False, True])
def test_amx_large_m_route(cpu_isa, monkeypatch, bits, K, N, gs, act_order):
    # The AMX route (amx level, bf16 activations) forced for every row count, odd M (tails of 16-row blocks, an odd
    # number of blocks), N not a multiple of 32 (the last column tile cut), act-order, bias: within the bf16 output
    # rounding of the float64 reference, and within two bf16 ulps plus a few fp32 ulps of sum |x| |W| of the float
    # kernel's result (products exact, fp32 sums in another order). On the other levels the same calls take the
    # dequantize-tiles path, so the test still runs there.
    monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", "1")
    layer, hub = _layer(bits, K, N, gs, act_order, "gptq")
    assert hub["bias"] is not None
    kgs = F.resolve_group_size(gs, K)
    W = F.reference_dequantize(hub["qweight"], hub["qzeros"], hub["scales"], hub["g_idx"], bits=bits, group_size=kgs,
                               in_features=K, out_features=N)
    for M in (1, 15, 16, 17, 33, 48, 130):
        x = torch.randn(M, K).to(torch.bfloat16)
        x[0, : K // 3] *= 1e-4
        ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=kgs, in_features=K, out_features=N)
        y = layer(x)
        assert y.dtype == torch.bfloat16 and y.shape == (M, N)
        assert rel_err(y, ref) < 8e-3, (M, rel_err(y, ref))
        monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "never")
        yf = layer(x.float())
        monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "auto")
        terms = x.double().abs() @ W.abs() + hub["bias"].double().abs()
        tol = yf.double().abs() * 2.0 ** -7 + terms * 2.0 ** -22
        assert torch.all((y.double() - yf.double()).abs() <= tol + 1e-30), M


def _bf16_values(t):
    return t.to(torch.bfloat16).float()


@pytest.mark.parametrize("bits,K,N,gs", CASES)
@pytest.mark.parametrize("act_order", [False, True])
def test_integer_kernel_matches_float64_reference(cpu_isa, monkeypatch, bits, K, N, gs, act_order):
    # The integer kernel, forced for fp32 activations too, checked at fp32 output precision: with bf16-valued
    # activations every product is exact and the int32 sums are exact, so only the final fp32 sums round.
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "always")
    monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", "100000")
    layer, hub = _layer(bits, K, N, gs, act_order, "gptq_v2")
    kgs = F.resolve_group_size(gs, K)
    for M in (1, 2, 3, 17):
        for x in (_bf16_values(torch.randn(M, K)), torch.randn(M, K)):  # bf16 values; arbitrary fp32 values
            ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=kgs, in_features=K, out_features=N,
                                   checkpoint_format="gptq_v2")
            assert rel_err(layer(x), ref) < 2e-6, (M, rel_err(layer(x), ref))


@pytest.mark.parametrize("bits", [3, 4])
def test_integer_kernel_residuals_and_extreme_ranges(cpu_isa, monkeypatch, bits):
    # Values far below their block's maximum (down to 2^-60 of it) leave residuals (at every position of a packing
    # unit, int3's sliced values included); a row of zeros; rows whose maximum is so small that the block exponent
    # is clamped; a row that mixes 1e30 and 1e-30. Each row must still match the float64 reference at fp32
    # precision.
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "always")
    K, N = 256, 64
    layer, hub = _layer(bits, K, N, 128, True, "gptq")
    x = torch.randn(6, K)
    x[0] *= torch.pow(2.0, -torch.randint(0, 60, (K,)).float())
    x[1] = 0
    x[2] *= 1e-36
    x[3, ::7] *= 1e-38
    x[4, :K // 2] *= 1e30
    x[4, K // 2:] *= 1e-30
    x = _bf16_values(x)
    # fp32 rows whose block maximum lies just below a power of two: max * 2^(15-e) rounds up to 2^15, which must not
    # wrap to -2^15 in int16 (the largest value below 1, and one below 2^-3 with a negative twin).
    edge = torch.rand(2, K) * 0.5
    edge[0, 5] = 0.99999994
    edge[1, 100] = -0.12499999
    edge[1, 200] = 0.12499999
    x = torch.cat([x, edge])
    ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=128, in_features=K, out_features=N)
    y = layer(x)
    for m in range(x.shape[0]):
        if ref[m].norm() == 0:
            assert torch.all(y[m] == 0)
        else:
            assert rel_err(y[m], ref[m]) < 2e-6, (m, rel_err(y[m], ref[m]))


@pytest.mark.parametrize("bits", [2, 4])
def test_bf16_activations_extreme_rows(cpu_isa, monkeypatch, bits):
    # bf16 rows the bf16 kernel (avx512bf16, 2/4 bits, from 4 rows) takes and rows it refuses, as a precaution,
    # because vdpbf16ps flushes subnormals (a subnormal value; a maximum below 2^-100), each with 3 ordinary rows
    # and all in one call: every call must agree with the float kernel within the rounding of a differently
    # ordered fp32 sum (the integer kernel takes the refused calls; the other levels take everything with it).
    K, N = 256, 48
    layer, hub = _layer(bits, K, N, 64, True, "gptq")
    W = F.reference_dequantize(hub["qweight"], hub["qzeros"], hub["scales"], hub["g_idx"], bits=bits, group_size=64,
                               in_features=K, out_features=N)
    x = torch.randn(6, K)
    x[0] *= torch.pow(2.0, -torch.randint(0, 60, (K,)).float())
    x[1] = 0
    x[2] = torch.sign(x[2]) * (1 + torch.rand(K)) * 1e-36  # max |x| ~ 2^-118, no subnormal
    x[3, ::7] = 1e-39 * torch.sign(x[3, ::7])  # subnormal in bf16 too
    x[4, : K // 2] *= 1e30
    x[4, K // 2:] *= 1e-30
    x = x.to(torch.bfloat16)
    assert (x[3].float().abs().min() < 2.0 ** -126) and (0 < x[3].float().abs().min())
    plain = torch.randn(3, K).to(torch.bfloat16)
    for xs in [x] + [torch.cat([x[m:m + 1], plain]) for m in range(6)]:
        monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "auto")
        y = layer(xs)
        monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "never")
        yf = layer(xs)
        terms = xs.double().abs() @ W.abs()
        tol = yf.double().abs() * 2.0 ** -7 + terms * 2.0 ** -22
        assert torch.all((y.double() - yf.double()).abs() <= tol + 1e-300)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_integer_kernel_non_finite_activations_fall_back(cpu_isa, monkeypatch, bad):
    # inf/NaN cannot be held in int16: the op computes such calls with the float kernel, whose results are IEEE's.
    layer, _ = _layer(4, 128, 64, 32, False, "gptq")
    x = torch.randn(3, 128).to(torch.bfloat16)
    x[1, 5] = bad
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "auto")
    y = layer(x)
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "never")
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(y[1]).any() and torch.isfinite(y[[0, 2]]).all()


def test_int_path_setting_is_validated(monkeypatch):
    layer, _ = _layer(4, 64, 32, 32, False, "gptq")
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "sometimes")
    with pytest.raises(RuntimeError, match="SLIMFORMER_CPU_INT_PATH must be 'auto', 'always' or 'never'"):
        layer(torch.randn(1, 64).to(torch.bfloat16))


def test_small_and_large_m_paths_match_the_reference(monkeypatch):
    layer, hub = _layer(4, 256, 96, 64, True, "gptq_v2")
    x = torch.randn(24, 256)
    ref = F.reference_gemm(x.double(), **hub, bits=4, group_size=64, in_features=256, out_features=96,
                           checkpoint_format="gptq_v2")
    for threshold in ("1000", "1"):  # fused kernel, then dequantize-tiles + dense GEMM
        monkeypatch.setenv("SLIMFORMER_CPU_LARGE_M", threshold)
        assert rel_err(layer(x), ref) < 2e-6, threshold


@pytest.mark.parametrize("bits,K,N,gs", [(4, 200, 72, 32), (3, 160, 96, -1), (2, 96, 48, 32), (8, 72, 24, 64)])
@pytest.mark.parametrize("act_order", [False, True])
def test_reference_tiled_gemm_is_the_hub_reference(monkeypatch, bits, K, N, gs, act_order):
    # reference_tiled_gemm / reference_tiled_dequantize: the stated spec of the kernels (on the kernel layout) and
    # the fallback without the native extension; checked against the float64 Hub-layout reference
    layer, hub = _layer(bits, K, N, gs, act_order, "gptq_v2")
    b = layer._buffers
    kw = dict(bits=bits, group_size=layer.kernel_group_size, in_features=K, out_features=N)
    x = torch.randn(3, 2, K)
    ref = F.reference_gemm(x.double(), **hub, **kw, checkpoint_format="gptq_v2")
    y = F.reference_tiled_gemm(x, b["qtiles"], b["scale_zero"], b["perm"], b["bias"], **kw)
    assert y.dtype == torch.float32 and y.shape == (3, 2, N) and rel_err(y, ref) < 2e-6
    W = F.reference_tiled_dequantize(b["qtiles"], b["scale_zero"], **kw)
    Wref = F.reference_dequantize(*(hub[k] for k in ("qweight", "qzeros", "scales", "g_idx")), **kw,
                                  checkpoint_format="gptq_v2")
    perm = b["perm"] if b["perm"] is not None else torch.arange(K)
    assert torch.equal(W.double(), Wref[perm])  # every value scale * (q - zero) is exact in fp32
    # the op falls back to it, with one warning, when the extension is missing
    from slimformer import ops
    monkeypatch.setattr(ops, "HAS_NATIVE", False)
    monkeypatch.setattr(ops, "_warned", False)
    with pytest.warns(RuntimeWarning, match="native extension not available"):
        assert torch.equal(layer(x), y)


def test_non_contiguous_activations(cpu_isa):
    layer, hub = _layer(4, 128, 64, 32, False, "gptq")
    x = torch.randn(128, 6).t()  # non-contiguous [6, 128]
    ref = F.reference_gemm(x.double(), **hub, bits=4, group_size=32, in_features=128, out_features=64)
    assert rel_err(layer(x), ref) < 2e-5


def test_empty_batch():
    layer, _ = _layer(4, 64, 32, 32, False, "gptq")
    assert layer(torch.randn(0, 64)).shape == (0, 32)


def test_fp16_scales_normal_subnormal_and_extreme(cpu_isa):
    # The kernel layout keeps scales in fp16; the portable path decodes them in software (half_to_float in
    # gptq_layout.h, shared with CUDA), the SIMD paths with the conversion instruction. Every kind of fp16 value a
    # checkpoint may hold must come out exact, subnormals included.
    K, N = 128, 64
    hub, _, _ = random_hub_layer(K, N, 4, 32, checkpoint_format="gptq_v2")
    special = torch.tensor([2.0 ** -24, 3 * 2.0 ** -24, 2.0 ** -15, 1023 * 2.0 ** -24, 2.0 ** -14, 1.0, 65504.0,
                            -(2.0 ** -20), -1.5], dtype=torch.float16)
    scales = hub["scales"].clone()
    scales.view(-1)[: special.numel() * 7].copy_(special.repeat(7))
    hub["scales"] = scales
    layer = QuantLinear.from_gptq(**hub, bits=4, group_size=32, checkpoint_format="gptq_v2")
    W = F.reference_dequantize(**{k: hub[k] for k in ("qweight", "qzeros", "scales", "g_idx")}, bits=4,
                               group_size=32, in_features=K, out_features=N, checkpoint_format="gptq_v2")
    assert torch.equal(layer.dequantize().double(), W.t())  # every product here is exact in fp32
    x = torch.randn(3, K)
    ref = F.reference_gemm(x.double(), **hub, bits=4, group_size=32, in_features=K, out_features=N,
                           checkpoint_format="gptq_v2")
    assert rel_err(layer(x), ref) < 2e-5


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


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e6, 1e20, 1e32, 1e37])
def test_activation_magnitudes(cpu_isa, scale):
    # The per-row exponent of the prescale adapts to each row's magnitude: tiny, huge and all-zero rows stay exact.
    # Rows with |x| >= 2^100 (~1.3e30) came out NaN on the SIMD paths before their output was rescaled.
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


def _two_hot_layer(pairs, K=64, bits=4):
    """Per-channel layer with scale 1 and zero 0 whose column n is x[a] + x[b] for pairs[n] = (a, b); columns are
    padded with copies of the last pair to a multiple of 8 (qzeros packs along the columns)."""
    pairs = pairs + [pairs[-1]] * (-len(pairs) % 8)
    N = len(pairs)
    q = torch.zeros(K, N, dtype=torch.int32)
    for n, (a, b) in enumerate(pairs):
        q[a, n] += 1
        q[b, n] += 1
    zeros = torch.zeros(1, N, dtype=torch.int32)
    return QuantLinear.from_gptq(F.pack_rows(q, bits), F.qzeros_from_zeros(zeros, bits, "gptq_v2"),
                                 torch.ones(1, N, dtype=torch.float16), F.default_g_idx(K, K), bits=bits,
                                 group_size=-1, checkpoint_format="gptq_v2")


def _two_hot_expected(x, pairs):
    xf = x.float()[0]
    return (xf[[a for a, _ in pairs]] + xf[[b for _, b in pairs]]).to(torch.bfloat16)


@pytest.mark.parametrize("int_path", ["always", "never"])
def test_bf16_output_rounds_like_torch(cpu_isa, monkeypatch, int_path):
    # The small-M kernels write bf16 results themselves: fp32 sums x[a] + x[b] chosen to land exactly on the ties
    # of bf16 rounding (to even, both ways) and just beside them must round as torch's own fp32 -> bf16
    # conversion does. 40 columns: the second tile is partial.
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", int_path)
    vals = [1.0, 2.0 ** -8, 1.0 + 2.0 ** -7, 2.0 ** -9, 2.0 ** -16, -1.0, -(2.0 ** -8), 3.0, 2.0 ** -6 + 2.0 ** -8,
            0.0, 2.0 ** 66, 2.0 ** 58 + 2.0 ** 51]
    x = torch.tensor([vals + [0.0] * (64 - len(vals))], dtype=torch.bfloat16)
    assert torch.equal(x.float()[0, :len(vals)], torch.tensor(vals))  # every value is a bf16 value
    pairs = [(0, 1), (2, 1), (0, 3), (2, 3), (0, 4), (5, 6), (7, 8), (0, 9), (9, 9), (10, 11), (10, 1)]
    pairs = (pairs * 4)[:40]
    y = _two_hot_layer(pairs)(x)
    assert y.dtype == torch.bfloat16 and y.shape == (1, 40)
    torch.testing.assert_close(y[0], _two_hot_expected(x, pairs), rtol=0, atol=0)
    assert y[0, 0] == 1.0 and y[0, 1] == 1.0 + 2.0 ** -6  # the ties: down to even, up to even


def test_bf16_output_rounds_to_inf(cpu_isa, monkeypatch):
    # The largest bf16 plus half its ulp is finite in fp32 and a tie that rounds (to even) to inf in bf16. Integer
    # kernel only: the float kernel's prescale limits rows to |x| < 2^100 (prepare_rows in gptq_cpu_kernel.h).
    monkeypatch.setenv("SLIMFORMER_CPU_INT_PATH", "always")
    big = torch.finfo(torch.bfloat16).max
    x = torch.tensor([[big, 2.0 ** 119, 1.0] + [0.0] * 61], dtype=torch.bfloat16)
    pairs = [(0, 1), (0, 2)]
    y = _two_hot_layer(pairs)(x)
    torch.testing.assert_close(y[0], _two_hot_expected(x, pairs + [pairs[-1]] * 6), rtol=0, atol=0)
    assert y[0, 0] == float("inf") and y[0, 1] == big


def test_bf16_output_non_finite(cpu_isa):
    # inf activations give NaN/inf sums (inf * 0 weights are NaN, as in a dense fp32 GEMM); the bf16 output holds
    # them exactly as converting the fp32 output would.
    layer = _two_hot_layer([(0, 1), (0, 2), (3, 3)])
    x = torch.tensor([[float("inf"), 5.0, 1.0, 2.0] + [0.0] * 60], dtype=torch.bfloat16)
    y = layer(x)
    torch.testing.assert_close(y, layer(x.float()).to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)
    assert not torch.isfinite(y).any()
