"""GPTQ itself: against the published reference implementation (AutoGPTQ 0.7.1's pure-PyTorch GPTQ, which the
Makefile installs without its dependencies), against round-to-nearest, and on bad input."""
import importlib
import importlib.util
import math
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from slimformer import QuantLinear, quantize_weight
from slimformer.gptq import GPTQResult, HessianAccumulator, gptq, quantization_grid, reconstruction_error
from slimformer.gptq import round_to_nearest


def _load_reference():
    """AutoGPTQ's quantization/gptq.py + quantizer.py, imported as a stand-alone package: its top-level __init__
    pulls in CUDA extensions and model code we do not want, its GPTQ class needs only torch and transformers."""
    spec = importlib.util.find_spec("auto_gptq")
    if spec is None:
        raise RuntimeError("the reference GPTQ implementation is missing: `make test` installs auto-gptq==0.7.1 "
                           "(pip install --no-deps auto-gptq==0.7.1)")
    root = Path(list(spec.submodule_search_locations)[0]) / "quantization"
    pkg = types.ModuleType("_reference_gptq")
    pkg.__path__ = [str(root)]
    sys.modules["_reference_gptq"] = pkg
    return importlib.import_module("_reference_gptq.gptq")


@pytest.fixture(scope="module")
def reference(request):
    module = _load_reference()
    saved = torch.cuda.synchronize
    torch.cuda.synchronize = lambda *a, **k: None  # the reference calls it unconditionally; we run on the CPU
    request.addfinalizer(lambda: setattr(torch.cuda, "synchronize", saved))
    return module


def _problem(seed, N=192, K=512, n=2048):
    """A weight and a Hessian from correlated calibration inputs with a few outlier channels, as LLM layers have."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, K, generator=g) / K ** 0.5
    X = torch.randn(n, K, generator=g) @ A + torch.randn(n, K, generator=g) * 0.1
    X[:, :8] *= 10
    W = torch.randn(N, K, generator=g) * 0.05
    return W, 2.0 / n * X.t() @ X


def _reference_error(reference, W, H, bits, gs, sym, act_order, static_groups):
    """The reference's layer-output error, for its weights as a checkpoint stores them (fp16 scales)."""
    N, K = W.shape
    lin = torch.nn.Linear(K, N, bias=False)
    lin.weight.data = W.clone()
    R = reference.GPTQ(lin)
    R.H, R.nsamples = H.clone(), 1
    R.quantizer.configure(bits, perchannel=True, sym=sym, mse=False)
    scale, zero, g_idx = R.fasterquant(blocksize=128, percdamp=0.01, group_size=gs, actorder=act_order,
                                       static_groups=static_groups)
    s, z = scale[:, g_idx.long()], zero[:, g_idx.long()]
    q = torch.clamp(torch.round(lin.weight.data / s) + z, 0, 2 ** bits - 1)
    return reconstruction_error(W, (q - z) * s.half().float(), H)


SETTINGS = [(bits, gs, sym, ao, sg) for bits in (4, 3) for gs in (128, -1) for sym in (True, False)
            for ao, sg in ((False, False), (True, False), (True, True))]


def test_no_worse_than_reference_and_better_than_rtn(reference):
    """Same algorithm, so the errors agree up to rounding ties (we round against the fp16 scale the checkpoint
    stores; the reference rounds against the fp32 one): each setting within 1%, and no worse on average."""
    ratios = []
    for seed in range(2):
        W, H = _problem(seed)
        for bits, gs, sym, ao, sg in SETTINGS:
            ref = _reference_error(reference, W, H, bits, gs, sym, ao, sg)
            ours = gptq(W, H, bits=bits, group_size=gs, sym=sym, act_order=ao, static_groups=sg)
            q, s, z = round_to_nearest(W, bits, gs, sym)
            rtn = reconstruction_error(W, GPTQResult(q, s, z, _natural_g_idx(W.shape[1], gs), bits, gs, sym, False,
                                                     0.0, 0.0).dequantize(), H)
            setting = dict(seed=seed, bits=bits, gs=gs, sym=sym, act_order=ao, static=sg)
            assert ours.error <= 1.01 * ref, (setting, ours.error, ref)
            assert ours.error < 0.5 * rtn, (setting, ours.error, rtn)
            ratios.append(ours.error / ref)
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert geomean <= 1.002, geomean


def _natural_g_idx(K, gs):
    return (torch.arange(K) // (K if gs == -1 else gs)).to(torch.int32)


@pytest.mark.parametrize("static_groups", [False, True])
def test_act_order_g_idx(static_groups):
    W, H = _problem(3, N=64, K=256, n=512)
    r = gptq(W, H, bits=4, group_size=64, act_order=True, static_groups=static_groups)
    counts = torch.bincount(r.g_idx.long())
    assert counts.tolist() == [64] * 4
    monotonic = bool((r.g_idx[1:] >= r.g_idx[:-1]).all())
    assert monotonic == static_groups  # dynamic groups follow the visiting order, static ones the columns
    if not static_groups:
        perm = torch.argsort(H.diagonal(), descending=True, stable=True)
        assert torch.equal(r.g_idx[perm], torch.arange(256, dtype=torch.int32) // 64)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits,sym", [(4, True), (3, False), (2, False), (8, True)])
def test_quantize_weight_module_matches_its_integers(bits, sym, act_order):
    W, H = _problem(4, N=64, K=256, n=512)
    layer, r = quantize_weight(W, H, bits=bits, group_size=64, sym=sym, act_order=act_order, return_result=True)
    assert isinstance(layer, QuantLinear) and layer.bias is None
    assert layer.bits == bits and (layer.perm is not None) == act_order
    assert torch.allclose(layer.dequantize(), r.dequantize(), rtol=0, atol=1e-6)
    x = torch.randn(5, 256)
    assert torch.allclose(layer(x), x @ r.dequantize().t(), rtol=1e-4, atol=1e-4)
    assert r.error == pytest.approx(reconstruction_error(W, layer.dequantize(), H), rel=1e-6)


def test_error_falls_with_bits():
    W, H = _problem(5, N=64, K=256, n=512)
    errs = [gptq(W, H, bits=b, group_size=128).error for b in (2, 3, 4, 8)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4


def test_dead_inputs_get_zero_weight():
    W, H = _problem(6, N=32, K=128, n=512)
    H[5, :] = 0
    H[:, 5] = 0
    r = gptq(W, H, bits=4, group_size=128)
    assert torch.all(r.dequantize()[:, 5] == 0)


def test_singular_hessian_retries_with_more_damping():
    K = 64
    x = torch.randn(4, K)  # 4 samples of 64 features: rank 4
    H = 2 / 4 * x.t() @ x
    W = torch.randn(16, K)
    with pytest.warns(RuntimeWarning, match="succeeded with damp"):
        r = gptq(W, H, bits=4, group_size=-1, damp=0.0)
    assert r.damp > 0 and 0 < r.error < 0.2


def test_hessian_accumulator_is_mean_outer_product():
    acc = HessianAccumulator(16)
    xs = [torch.randn(2, 5, 16), torch.randn(7, 16), torch.randn(1, 3, 16, dtype=torch.bfloat16)]
    for x in xs:
        acc.add(x)
    X = torch.cat([x.reshape(-1, 16).float() for x in xs])
    assert acc.rows == 20
    assert torch.allclose(acc.hessian, 2 / 20 * X.t() @ X, atol=1e-5)
    with pytest.raises(ValueError, match="expected 16"):
        acc.add(torch.randn(3, 8))


def test_mse_grid_never_worse_in_its_norm():
    w = torch.randn(128, 64)
    w[0, :] = 8.0  # an outlier row the min/max grid stretches to cover
    for sym in (True, False):
        errs = []
        for mse in (False, True):
            s, z = quantization_grid(w, 3, sym, mse=mse)
            deq = (torch.clamp(torch.round(w / s) + z, 0, 7) - z) * s
            errs.append((deq - w).abs().pow(2.4).sum(0))
        assert torch.all(errs[1] <= errs[0] * (1 + 1e-6))
        assert errs[1].sum() < errs[0].sum()


def test_bad_input():
    W, H = _problem(7, N=16, K=128, n=256)
    with pytest.raises(ValueError, match=r"\[128, 128\]"):
        gptq(W, H[:64, :64])
    with pytest.raises(ValueError, match="bits must be one of"):
        gptq(W, H, bits=5)
    with pytest.raises(ValueError, match="NaN"):
        gptq(W, H * float("nan"))
    with pytest.raises(ValueError, match="2-D floating-point"):
        gptq(W.to(torch.int32), H)
    with pytest.raises(ValueError, match="block_size"):
        gptq(W, H, block_size=0)
    with pytest.raises(ValueError, match="damp"):
        gptq(W, H, damp=-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a healthy Hessian takes no retries
        gptq(W, H)


def _asymmetric_problem(seed, N=96, K=256, n=2048):
    """Full-precision inputs X and the inputs Xq a partly quantized model gives the same layer (X plus an error
    that grows with each channel's scale), as GPTQv2's asymmetric calibration sees them."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g) @ (torch.eye(K) + torch.randn(K, K, generator=g) * 0.2)
    X[:, :4] *= 6
    Xq = X + 0.1 * X.std(0) * torch.randn(n, K, generator=g)
    W = torch.randn(N, K, generator=g) * 0.05
    acc = HessianAccumulator(K, asymmetric=True)
    for part in range(4):  # accumulated in pieces, as calibration batches arrive
        rows = slice(part * n // 4, (part + 1) * n // 4)
        acc.add(Xq[rows], X[rows])
    return W, X, Xq, acc


def test_asymmetric_accumulator_cross_term():
    W, X, Xq, acc = _asymmetric_problem(8, K=64, n=256)
    assert torch.allclose(acc.hessian, 2 / 256 * Xq.t() @ Xq, atol=1e-4)
    assert torch.allclose(acc.cross, 2 / 256 * (X - Xq).t() @ Xq, atol=1e-4)
    with pytest.raises(ValueError, match="full-precision input fp is required"):
        acc.add(Xq)
    with pytest.raises(ValueError, match="only then"):
        HessianAccumulator(64).add(Xq, X)
    with pytest.raises(ValueError, match="rows"):
        acc.add(Xq[:10], X[:11])


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
def test_asymmetric_calibration_targets_the_full_precision_output(bits, act_order):
    W, X, Xq, acc = _asymmetric_problem(9)
    target = X @ W.t()

    def error(r):
        return (((Xq @ r.dequantize().t() - target) ** 2).sum() / (target ** 2).sum()).item()

    plain = gptq(W, acc.hessian, bits=bits, group_size=128, act_order=act_order)
    off = gptq(W, acc.hessian, bits=bits, group_size=128, act_order=act_order, asym_cross=acc.cross, asym_alpha=0)
    assert torch.equal(plain.q, off.q) and torch.equal(plain.scales, off.scales)  # alpha 0 is plain GPTQ
    errs = [error(gptq(W, acc.hessian, bits=bits, group_size=128, act_order=act_order, asym_cross=acc.cross,
                       asym_alpha=a)) for a in (0.25, 1.0)]
    assert errs[0] < error(plain) and errs[1] < errs[0], (error(plain), errs)
    # GPTQ toward the least-squares target solves the objective exactly for the free columns: better still
    for gs in (128, -1):
        base = error(gptq(W, acc.hessian, bits=bits, group_size=gs, act_order=act_order))
        lstsq = error(gptq(W, acc.hessian, bits=bits, group_size=gs, act_order=act_order, asym_cross=acc.cross,
                           asym_alpha=1.0, asym_method="lstsq"))
        assert lstsq < (errs[1] if gs == 128 else base), (gs, base, errs, lstsq)
    with pytest.raises(ValueError, match="asym_cross must be"):
        gptq(W, acc.hessian, asym_cross=acc.cross[:8])
    with pytest.raises(ValueError, match="asym_method must be one of"):
        gptq(W, acc.hessian, asym_cross=acc.cross, asym_method="exact")
    with pytest.raises(ValueError, match="asym_alpha must be a finite number"):
        gptq(W, acc.hessian, asym_cross=acc.cross, asym_alpha=float("nan"))
