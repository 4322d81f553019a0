"""Offline GPTQ-family quantization. This issue ships round-to-nearest (RTN) on the GPTQ grid; the second-order
GPTQ algorithm builds on the same grid."""
from __future__ import annotations

import torch

from ..formats import gptq_format
from .format import resolve_group_size


def quantization_grid(w: torch.Tensor, bits: int, sym: bool):
    """Per-column scale and zero point for a block of weights w [rows, N] (GPTQ's min/max grid).

    sym: zero = 2^(bits-1), scale = 2 max|w| / (2^bits - 1); asym: scale = (max - min) / (2^bits - 1),
    zero = round(-min / scale). Scales are rounded to fp16 here, since that is what the checkpoint stores and
    the integers must be computed against the stored scale. An all-zero column gets the grid of [-1, 1]."""
    maxq = (1 << bits) - 1
    wmin = torch.clamp(w.min(0).values, max=0)
    wmax = torch.clamp(w.max(0).values, min=0)
    if sym:
        wmax = torch.maximum(wmin.abs(), wmax)
        wmin = torch.where(wmin < 0, -wmax, wmin)
    dead = (wmin == 0) & (wmax == 0)
    wmin = torch.where(dead, -torch.ones_like(wmin), wmin)
    wmax = torch.where(dead, torch.ones_like(wmax), wmax)
    scale = ((wmax - wmin) / maxq).to(torch.float16).to(torch.float32)
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float16).tiny), scale)
    if sym:
        zero = torch.full_like(scale, (maxq + 1) // 2)
    else:
        zero = torch.clamp(torch.round(-wmin / scale), 0, maxq)
    return scale, zero


def round_to_nearest(weight: torch.Tensor, bits: int = 4, group_size: int = 128, sym: bool = True):
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
        scale, zero = quantization_grid(block, bits, sym)
        q[g * gs:(g + 1) * gs] = torch.clamp(torch.round(block / scale) + zero, 0, maxq).to(torch.int32)
        scales[g] = scale.to(torch.float16)
        zeros[g] = zero.to(torch.int32)
    return q, scales, zeros
