"""Offline GPTQ-family quantization: the min/max grid (with an optional MSE shrink search), round-to-nearest,
the Hessian accumulator and GPTQ itself (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023).

GPTQ quantizes the columns (input features) of W [out, in] one at a time and spreads each column's rounding
error over the columns not yet quantized, weighted by the inverse Hessian H^-1 of the layer's reconstruction
loss ||X W^T - X Q^T||^2 (H = 2 X^T X / n). With U the upper Cholesky factor of H^-1, quantizing column j and
updating the rest is  err = (w_j - q_j) / U_jj;  W[:, j:] -= err U[j, j:].  Columns go in blocks of block_size:
inside a block the update is applied column by column, the rest of the matrix gets one GEMM per block
("lazy batch updates"), which is exact, since later blocks only see the sum of the earlier updates."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..formats import gptq_format
from ..hessian import (HessianAccumulator, check_weight_and_hessian, inverse_hessian_cholesky,  # noqa: F401
                       reconstruction_error, working_copies)
from .format import resolve_group_size


def _grid_from_range(wmin: torch.Tensor, wmax: torch.Tensor, maxq: int, sym: bool):
    scale = ((wmax - wmin) / maxq).to(torch.float16).to(torch.float32)
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float16).tiny), scale)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.clamp(torch.round(-wmin / scale), 0, maxq)
    return scale, zero


def quantize_to_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integers clamp(round(w / scale) + zero, 0, maxq) (float tensor); scale/zero broadcast against w."""
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def quantization_grid(w: torch.Tensor, bits: int, sym: bool, *, mse: bool = False, norm: float = 2.4,
                      grid: int = 100, max_shrink: float = 0.8):
    """Per-column scale and zero point for a block of weights w [rows, N] (GPTQ's min/max grid).

    sym: zero = 2^(bits-1), scale = 2 max|w| / (2^bits - 1); asym: scale = (max - min) / (2^bits - 1),
    zero = round(-min / scale). Scales are rounded to fp16 here, since that is what the checkpoint stores and
    the integers must be computed against the stored scale. An all-zero column gets the grid of [-1, 1].

    mse=True also tries the range shrunk by p = 1 - i/grid for i < max_shrink * grid and keeps, per column, the
    grid with the smallest sum |w - dequant(w)|^norm (GPTQ's optional search; norm 2.4 as published)."""
    maxq = (1 << bits) - 1
    w = w.to(torch.float32)
    wmin = torch.clamp(w.min(0).values, max=0)
    wmax = torch.clamp(w.max(0).values, min=0)
    if sym:
        wmax = torch.maximum(wmin.abs(), wmax)
        wmin = torch.where(wmin < 0, -wmax, wmin)
    dead = (wmin == 0) & (wmax == 0)
    wmin = torch.where(dead, -torch.ones_like(wmin), wmin)
    wmax = torch.where(dead, torch.ones_like(wmax), wmax)
    scale, zero = _grid_from_range(wmin, wmax, maxq, sym)
    if mse:
        best = torch.full_like(scale, math.inf)
        for i in range(int(max_shrink * grid)):
            p = 1.0 - i / grid
            s, z = _grid_from_range(p * wmin, p * wmax, maxq, sym)
            err = ((quantize_to_grid(w, s, z, maxq) - z) * s - w).abs_().pow_(norm).sum(0)
            better = err < best
            best = torch.where(better, err, best)
            scale = torch.where(better, s, scale)
            zero = torch.where(better, z, zero)
    return scale, zero


def round_to_nearest(weight: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = True, *,
                     mse: bool = False):
    """RTN quantization of a linear weight [N, K] (nn.Linear layout).

    Returns q int32 [K, N], scales fp16 [G, N], zeros int32 [G, N] (true zero points)."""
    gptq_format(bits)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be floating point, got {weight.dtype}")
    N, K = weight.shape
    gs = resolve_group_size(group_size, K)
    wt = weight.detach().to(torch.float32).t()
    maxq = (1 << bits) - 1
    q = torch.empty(K, N, dtype=torch.int32, device=weight.device)
    G = -(-K // gs)
    scales = torch.empty(G, N, dtype=torch.float16, device=weight.device)
    zeros = torch.empty(G, N, dtype=torch.int32, device=weight.device)
    for g in range(G):
        block = wt[g * gs:(g + 1) * gs]
        scale, zero = quantization_grid(block, bits, sym, mse=mse)
        q[g * gs:(g + 1) * gs] = quantize_to_grid(block, scale, zero, maxq).to(torch.int32)
        scales[g] = scale.to(torch.float16)
        zeros[g] = zero.to(torch.int32)
    return q, scales, zeros


# --------------------------------------------------------------------------------------------------- GPTQ
ASYM_METHODS = ("gptqv2", "lstsq")  # how gptq() uses the asymmetric-calibration cross term

@dataclass
class GPTQResult:
    """Integers and grid of one quantized layer (Hub conventions) plus what the quantization cost."""
    q: torch.Tensor  # int32 [in, out]
    scales: torch.Tensor  # fp16 [groups, out]
    zeros: torch.Tensor  # int32 [groups, out], true zero points
    g_idx: torch.Tensor  # int32 [in]
    bits: int
    group_size: int
    sym: bool
    act_order: bool
    error: float  # relative reconstruction error tr(E H E^T) / tr(W H W^T) under the undamped Hessian
    damp: float  # the damping actually used (raised when the Cholesky needed it)

    def dequantize(self) -> torch.Tensor:
        """The quantized weight [out, in] in float32."""
        s = self.scales.to(torch.float32)[self.g_idx.long()]
        z = self.zeros.to(torch.float32)[self.g_idx.long()]
        return ((self.q.to(torch.float32) - z) * s).t()


def gptq(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = 128, sym: bool = True,
         act_order: bool = False, static_groups: bool = False, damp: float = 0.01, block_size: int = 128,
         mse: bool = False, asym_cross: torch.Tensor | None = None, asym_alpha: float = 0.25,
         asym_method: str = "gptqv2") -> GPTQResult:
    """GPTQ on weight [out, in] with the layer's Hessian [in, in]; returns the integers and grid (see
    quantize_weight for the module).

    Dead inputs (H_jj = 0) get weight 0 and H_jj = 1. act_order visits columns by descending H_jj; its groups
    are either dynamic (consecutive in visiting order: g_idx is then non-monotonic) or, with static_groups,
    fixed on the original column order before anything is quantized (g_idx stays monotonic, so no activation
    permutation is needed at run time). A group's grid is computed when its first column is reached, from the
    weights as updated so far.

    asym_cross (GPTQv2's asymmetric calibration; Li et al., "GPTQv2: Efficient Finetuning-Free Quantization with
    Asymmetric Calibration", ICML 2025): the cross term D = 2/n sum_t (x_t - x~_t) x~_t^T between the inputs x the
    full-precision model gives this layer and the inputs x~ of the model being quantized, from which `hessian`
    (built from x~) came. The target is then the full-precision output, min ||W x - Q x~||: quantizing column j
    with value w_j also moves the columns after it by asym_alpha * w_j P[j, j+1:], P = triu(D U^T, 1) U (U the
    upper Cholesky factor of H^-1), the part of the least-squares correction W D H^-1 that column j passes on
    to columns not yet quantized. asym_alpha scales that correction (0.25 as published; 0 is plain GPTQ).

    asym_method="lstsq" hands GPTQ the objective itself: ||W x - Q x~||^2 = (Q - W*) H (Q - W*)^T + const with
    W* = W + W D H^-1 (the least-squares weight for the inputs x~), so plain GPTQ started from W* minimizes it with
    the usual column updates, none of the correction dropped. It starts from W + asym_alpha * W D (H + lambda I)^-1:
    alpha 1 is W*, smaller values trust the calibration set's least-squares fit less. On all-MiniLM-L6-v2 it did a
    little better than the published update (benchmarks/README.md)."""
    gptq_format(bits)
    check_weight_and_hessian(weight, hessian, asym_cross)
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if asym_method not in ASYM_METHODS:
        raise ValueError(f"asym_method must be one of {ASYM_METHODS}, got {asym_method!r}")
    if not 0 <= asym_alpha < math.inf:
        raise ValueError(f"asym_alpha must be a finite number >= 0, got {asym_alpha}")
    N, K = weight.shape
    gs = resolve_group_size(group_size, K)
    maxq = (1 << bits) - 1
    W, H, dead = working_copies(weight, hessian)
    W0, H0 = W.clone(), H.clone()
    D = None
    if asym_cross is not None and asym_alpha != 0:
        D = asym_cross.detach().to(torch.float32, copy=True).to(W.device)
        D[:, dead] = 0.0

    groups = -(-K // gs)
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else None
    if perm is not None:
        W = W[:, perm]
        H = H[perm][:, perm]
        if D is not None:
            D = D[perm][:, perm]
    U, used_damp = inverse_hessian_cholesky(H, damp)
    del H
    P = None
    if D is not None and asym_method == "lstsq":  # start from the least-squares target (damped H^-1 = U^T U)
        W.add_(W.matmul(D).matmul(U.t()).matmul(U), alpha=asym_alpha)
    elif D is not None:  # strictly upper triangular, so column j's own update is unchanged
        P = (D @ U.t()).triu_(1).matmul(U).mul_(asym_alpha)
    del D
    static = None
    if static_groups or gs >= K:  # per-channel is one static group; grids on the original column order
        Wn = W if perm is None else W[:, torch.argsort(perm)]
        static = [quantization_grid(Wn[:, g * gs:(g + 1) * gs].t(), bits, sym, mse=mse) for g in range(groups)]
        del Wn

    Q = torch.empty_like(W)
    grids: list = [None] * groups
    scale = zero = None
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.empty_like(W1)
        Pre1 = torch.empty_like(W1) if P is not None else None  # each column's value when it was quantized
        for i in range(i2 - i1):
            col = i1 + i
            if static is not None:
                src = int(perm[col]) if perm is not None else col
                scale, zero = static[src // gs]
            elif col % gs == 0:
                ahead = torch.cat([W1[:, i:i + gs], W[:, i2:col + gs]], dim=1)  # this group, updated so far
                scale, zero = quantization_grid(ahead.t(), bits, sym, mse=mse)
                grids[col // gs] = (scale, zero)
            w = W1[:, i]
            q = quantize_to_grid(w, scale, zero, maxq)
            Q[:, col] = q
            err = (w - (q - zero) * scale) / U1[i, i]
            if P is not None:
                Pre1[:, i] = w
                W1[:, i + 1:].addr_(Pre1[:, i], P[col, col + 1:i2])
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
            Err1[:, i] = err
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)
        if P is not None:
            W[:, i2:].addmm_(Pre1, P[i1:i2, i2:])

    if static is not None:
        grids = static
        g_idx = torch.arange(K, device=W.device, dtype=torch.int32) // gs
    else:
        g_idx = torch.empty(K, dtype=torch.int32, device=W.device)
        order = torch.arange(K, device=W.device, dtype=torch.int32) // gs
        if perm is not None:
            g_idx[perm] = order
        else:
            g_idx = order
    if perm is not None:
        Qo = torch.empty_like(Q)
        Qo[:, perm] = Q
        Q = Qo
    scales = torch.stack([g[0] for g in grids]).to(torch.float16)
    zeros = torch.stack([g[1] for g in grids]).to(torch.int32)
    result = GPTQResult(q=Q.t().contiguous().to(torch.int32), scales=scales, zeros=zeros, g_idx=g_idx, bits=bits,
                        group_size=group_size, sym=sym, act_order=act_order, error=0.0, damp=used_damp)
    result.error = reconstruction_error(W0, result.dequantize(), H0)
    return result
