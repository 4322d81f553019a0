"""One-shot N:M pruning of one linear layer: magnitude, Wanda, SparseGPT, and SparseGPT joined with GPTQ quantization.

- magnitude: keep the n largest |w| of every m consecutive inputs.
- Wanda (Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024): score
  |w_ij| * ||X_j||_2 with the input-channel norms of the calibration activations; no weight update.
- SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot", ICML
  2023): the columns are visited in order as in GPTQ; at the first column of every group of m, the n kept of the
  group are those with the largest w^2 / [U]_jj^2 (U the upper Cholesky factor of the damped H^-1, the weights as
  updated so far); each column's error (w - kept part) / U_jj is spread over the later columns with U's row (lazy
  blocks: column by column inside a block, one GEMM for the rest). With bits set, every kept weight is also rounded
  to GPTQ's grid before its error is spread (the joint 2:4 + int4 pass; the grid of each group is set at its first
  column from the weights the mask is predicted to keep).
- asym_cross (GPTQv2's asymmetric calibration, see gptq.algorithm.gptq): the target becomes the full-precision
  model's output, by starting from W + alpha W D (H + lambda I)^-1 (the least-squares weight for the inputs the
  compressed model gives this layer)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..formats import gptq_format
from ..gptq.algorithm import quantization_grid, quantize_to_grid
from ..gptq.format import resolve_group_size
from ..hessian import check_weight_and_hessian, inverse_hessian_cholesky, reconstruction_error, working_copies
from . import format as fmt

METHODS = ("sparsegpt", "wanda", "magnitude")


@dataclass
class PruneResult:
    """A pruned (and optionally quantized) layer: the dense weight with its zeros, the mask, and what it cost."""
    weight: torch.Tensor  # [out, in] fp32, zeros where pruned (quantized values when bits is set)
    mask: torch.Tensor  # bool [out, in]
    n: int
    m: int
    method: str
    error: float  # relative reconstruction error tr(E H E^T) / tr(W H W^T) (nan without a Hessian)
    damp: float
    # joint 2:4 + GPTQ: integers of every weight (pruned ones included, 0 - zero point irrelevant), grid per group
    q: torch.Tensor | None = None  # int32 [in, out]
    scales: torch.Tensor | None = None  # fp16 [groups, out]
    zeros: torch.Tensor | None = None  # int32 [groups, out]
    bits: int | None = None
    group_size: int | None = None


def _check_weight(weight):
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D floating-point tensor [out_features, in_features], got "
                         f"{getattr(weight, 'dtype', type(weight))} of shape {tuple(getattr(weight, 'shape', ()))}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf")


def magnitude_prune(weight: torch.Tensor, n: int = 2, m: int = 4) -> PruneResult:
    _check_weight(weight)
    w = weight.detach().to(torch.float32)
    mask = fmt.nm_mask(w.abs(), n, m)
    return PruneResult(w * mask, mask, n, m, "magnitude", math.nan, 0.0)


def wanda_prune(weight: torch.Tensor, input_norms: torch.Tensor, n: int = 2, m: int = 4) -> PruneResult:
    _check_weight(weight)
    K = weight.shape[1]
    if not isinstance(input_norms, torch.Tensor) or tuple(input_norms.shape) != (K,):
        raise ValueError(f"input_norms must be a [{K}] tensor (one norm per input feature), got shape "
                         f"{tuple(getattr(input_norms, 'shape', ()))}")
    if not bool(torch.isfinite(input_norms).all()) or bool((input_norms < 0).any()):
        raise ValueError("input_norms must be finite and non-negative")
    w = weight.detach().to(torch.float32)
    mask = fmt.nm_mask(w.abs() * input_norms.to(w.device, torch.float32)[None, :], n, m)
    return PruneResult(w * mask, mask, n, m, "wanda", math.nan, 0.0)


def sparsegpt(weight: torch.Tensor, hessian: torch.Tensor, *, n: int = 2, m: int = 4, damp: float = 0.01,
              block_size: int = 128, bits: int | None = None, group_size: int = 128, sym: bool = True,
              mse: bool = False, asym_cross: torch.Tensor | None = None, asym_alpha: float = 0.25) -> PruneResult:
    """SparseGPT N:M on weight [out, in] with the layer's Hessian [in, in] (2/n X^T X); bits: also quantize the kept
    weights with GPTQ's grid (joint pass). See the module docstring."""
    fmt.check_nm(n, m)
    check_weight_and_hessian(weight, hessian, asym_cross)
    N, K = weight.shape
    fmt.check_in_features(K, m)
    if block_size <= 0 or block_size % m:
        raise ValueError(f"block_size must be a positive multiple of m={m}, got {block_size}")
    if not 0 <= asym_alpha < math.inf:
        raise ValueError(f"asym_alpha must be a finite number >= 0, got {asym_alpha}")
    if bits is not None:
        gptq_format(bits)
        gs = resolve_group_size(group_size, K)
        if gs < K and gs % m:
            raise ValueError(f"group_size must be a multiple of m={m} (or -1), got {group_size}")
        maxq = (1 << bits) - 1
    W, H, dead = working_copies(weight, hessian)
    W0, H0 = W.clone(), H.clone()
    U, used_damp = inverse_hessian_cholesky(H, damp)
    del H
    if asym_cross is not None and asym_alpha != 0:
        D = asym_cross.detach().to(torch.float32, copy=True).to(W.device)
        D[:, dead] = 0.0
        W.add_(W.matmul(D).matmul(U.t()).matmul(U), alpha=asym_alpha)
        del D
    udiag = U.diagonal()
    mask = torch.zeros(N, K, dtype=torch.bool, device=W.device)
    Q = torch.zeros(N, K, dtype=torch.int32, device=W.device) if bits is not None else None
    grids = []
    scale = zero = None
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % m == 0:  # choose this group's kept weights from the weights as updated so far
                score = W1[:, i:i + m].square() / udiag[col:col + m].square()[None, :]
                mask[:, col:col + m] = fmt.nm_mask(score, n, m)
            if bits is not None and col % gs == 0:
                ahead = torch.cat([W1[:, i:i + gs], W[:, i2:col + gs]], dim=1)
                span = ahead.shape[1] - ahead.shape[1] % m
                score = ahead[:, :span].square() / udiag[col:col + span].square()[None, :]
                kept = ahead[:, :span] * fmt.nm_mask(score, n, m)
                scale, zero = quantization_grid(kept.t(), bits, sym, mse=mse)
                grids.append((scale, zero))
            w = W1[:, i]
            keep = mask[:, col]
            if bits is not None:
                qi = quantize_to_grid(w, scale, zero, maxq)
                Q[:, col] = torch.where(keep, qi, zero).to(torch.int32)
                target = torch.where(keep, (qi - zero) * scale, torch.zeros_like(w))
            else:
                target = torch.where(keep, w, torch.zeros_like(w))
            err = (w - target) / U1[i, i]
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            W1[:, i] = target
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
    result = PruneResult(W * mask, mask, n, m, "sparsegpt", 0.0, used_damp)
    if bits is not None:
        result.q = Q.t().contiguous()
        result.scales = torch.stack([g[0] for g in grids]).to(torch.float16)
        result.zeros = torch.stack([g[1] for g in grids]).to(torch.int32)
        result.bits, result.group_size = bits, group_size
    result.error = reconstruction_error(W0, result.weight, H0)
    return result


def prune_weight(weight: torch.Tensor, hessian: torch.Tensor | None = None, *, n: int = 2, m: int = 4,
                 method: str = "sparsegpt", input_norms: torch.Tensor | None = None, damp: float = 0.01,
                 block_size: int = 128, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None):
    """Prunes one linear weight [out, in] to N:M and returns a Sparse24Linear.

    method "sparsegpt" needs the layer's Hessian (slimformer.hessian.HessianAccumulator), "wanda" the input-channel
    norms (InputNormStatistic.norms), "magnitude" nothing. The returned layer's `prune_error` holds the relative
    reconstruction error under the Hessian when one was given."""
    from .module import Sparse24Linear
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "sparsegpt":
        if hessian is None:
            raise ValueError("method='sparsegpt' needs the layer's Hessian (hessian=...)")
        r = sparsegpt(weight, hessian, n=n, m=m, damp=damp, block_size=block_size)
    elif method == "wanda":
        if input_norms is None:
            raise ValueError("method='wanda' needs the input-channel norms (input_norms=...)")
        r = wanda_prune(weight, input_norms, n, m)
    else:
        r = magnitude_prune(weight, n, m)
    if hessian is not None and method != "sparsegpt":
        r.error = reconstruction_error(weight.detach().to(torch.float32), r.weight, hessian)
    if dtype is None:
        dtype = weight.dtype if weight.dtype in fmt.FLOAT_DTYPES else torch.float32
    layer = Sparse24Linear.from_dense(r.weight, r.mask, bias, n=n, m=m, dtype=dtype)
    layer.prune_error = r.error
    return layer
