"""Second-order statistics shared by the Hessian-based compressors (GPTQ, SparseGPT, joint SparseGPT + GPTQ): the
running Hessian 2/n X^T X of a linear layer's inputs (with GPTQv2's cross term), the damped inverse's Cholesky
factor, and the reconstruction error ||X W^T - X Wq^T||^2 / ||X W^T||^2 every such method reports."""
from __future__ import annotations

import warnings

import torch


class HessianAccumulator:
    """Running H = 2/n sum_t x_t x_t^T over the n input rows (tokens) a linear layer has seen, in fp32.

    add(x) takes the layer input [..., in_features] in any float dtype. With asymmetric=True, add(x, fp) also
    takes the input the full-precision model gives the layer on the same tokens and accumulates the cross term
    cross = 2/n sum_t (fp_t - x_t) x_t^T that GPTQv2's asymmetric calibration needs (gptq(..., asym_cross=))."""

    def __init__(self, in_features: int, device=None, *, asymmetric: bool = False):
        self.in_features = in_features
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.cross = torch.zeros_like(self.hessian) if asymmetric else None
        self.rows = 0

    def _rows(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{what} has {x.shape[-1]} features, expected {self.in_features}")
        return x.detach().reshape(-1, self.in_features).to(self.hessian.device, torch.float32)

    def add(self, x: torch.Tensor, fp: torch.Tensor | None = None):
        if (fp is None) != (self.cross is None):
            raise ValueError("the full-precision input fp is required with asymmetric=True and only then")
        x = self._rows(x, "layer input")
        n = x.shape[0]
        if n == 0:
            return
        total = self.rows + n
        self.hessian.mul_(self.rows / total)
        self.hessian.addmm_(x.t(), x, alpha=2.0 / total)
        if fp is not None:
            dx = self._rows(fp, "full-precision layer input")
            if dx.shape[0] != n:
                raise ValueError(f"full-precision input has {dx.shape[0]} rows, the layer input {n}")
            dx = dx - x
            self.cross.mul_(self.rows / total)
            self.cross.addmm_(dx.t(), x, alpha=2.0 / total)
        self.rows = total


def check_weight_and_hessian(weight: torch.Tensor, hessian: torch.Tensor, asym_cross: torch.Tensor | None = None):
    """Clear errors for a weight [out, in], its Hessian [in, in] and an optional GPTQv2 cross term like H."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating-point tensor [out_features, in_features], got "
                         f"{getattr(weight, 'dtype', type(weight))} of shape {tuple(getattr(weight, 'shape', ()))}")
    K = weight.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (K, K) or not hessian.is_floating_point():
        raise ValueError(f"hessian must be a floating-point [{K}, {K}] tensor (in_features of the weight), got "
                         f"{getattr(hessian, 'dtype', type(hessian))} of shape "
                         f"{tuple(getattr(hessian, 'shape', ()))}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight contains NaN or Inf")
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN or Inf (did the calibration activations overflow?)")
    if asym_cross is not None:
        if not isinstance(asym_cross, torch.Tensor) or tuple(asym_cross.shape) != (K, K):
            raise ValueError(f"asym_cross must be a [{K}, {K}] tensor like the Hessian, got shape "
                             f"{tuple(getattr(asym_cross, 'shape', ()))}")
        if not torch.isfinite(asym_cross).all():
            raise ValueError("asym_cross contains NaN or Inf")


def working_copies(weight: torch.Tensor, hessian: torch.Tensor):
    """fp32 copies (W, H, dead) for a column-by-column solver: inputs the calibration never saw (H_jj = 0) get weight
    0 in W and H_jj = 1, so H stays invertible; dead marks them."""
    W = weight.detach().to(torch.float32).clone()
    H = hessian.detach().to(torch.float32, copy=True).to(W.device)
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0
    W[:, dead] = 0.0
    return W, H, dead


def inverse_hessian_cholesky(hessian: torch.Tensor, damp: float, *, max_tries: int = 6):
    """Upper Cholesky factor U of (H + lambda I)^-1, lambda = damp * mean(diag H), computed in fp64.

    When H + lambda I is not numerically positive definite, damp is raised tenfold (with a warning) up to
    max_tries times. Returns (U fp32, damp used)."""
    if damp < 0:
        raise ValueError(f"damp must be >= 0, got {damp}")
    H = hessian.to(torch.float64)
    mean_diag = H.diagonal().mean()
    idx = torch.arange(H.shape[0], device=H.device)
    tried = damp
    for attempt in range(max_tries):
        Hd = H.clone()
        Hd[idx, idx] += tried * mean_diag
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info) == 0 and torch.isfinite(U).all():
                if attempt:
                    warnings.warn(f"the Hessian was not positive definite with damp={damp}; succeeded "
                                  f"with damp={tried:g}", RuntimeWarning, stacklevel=3)
                return U.to(torch.float32), tried
        tried = max(tried * 10, 1e-4)
    raise RuntimeError(f"Cholesky of the damped Hessian failed even with damp={tried / 10:g}; the "
                       "calibration data is probably degenerate (too few tokens or constant inputs)")


def reconstruction_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative layer-output error tr(E H E^T) / tr(W H W^T), E = W - Wq: ||X W^T - X Wq^T||^2 / ||X W^T||^2 on the
    calibration inputs X the Hessian was built from."""
    W = weight.to(torch.float64)
    E = W - quantized.to(torch.float64)
    H = hessian.to(torch.float64)
    num = ((E @ H) * E).sum()
    den = ((W @ H) * W).sum()
    return float(num / den) if den > 0 else float(num)
