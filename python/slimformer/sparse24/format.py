"""N:M semi-structured sparsity: masks, the compressed layout, and the plain-PyTorch reference of every op (the spec
the kernels are tested against).

N:M keeps N of every M consecutive weights along the input dimension of a linear weight [out, in]. 2:4 is the one
NVIDIA's sparse tensor cores run and the one the native kernels serve; other ratios (4:8, 1:4) are pruned, stored and
evaluated through the reference path.

Compressed layout (the compressed-tensors "sparse-24-bitmask" layout, so a Hub checkpoint is read without
conversion; for N:M in general the same two tensors):
  values   [out, in * N / M]   the kept weights of each row in column order (fp32, bf16 or fp16)
  bitmask  uint8 [out, ceil(in / 8)]   bit j % 8 of byte j // 8 is set when column j is kept (numpy's little bit
           order); every group of M columns has exactly N bits set.
For 2:4 the bitmask holds the same information as two 2-bit positions per group (4 bits per 4 weights): one
nibble per group, the low nibble of each byte the even group. A kept weight may itself be 0.0."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_nm(n: int, m: int) -> tuple[int, int]:
    """(n, m) checked: integers with 0 < n < m <= 32."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if not 0 < n < m <= 32:
        raise ValueError(f"N:M sparsity needs 0 < n < m <= 32, got {n}:{m}")
    return n, m


def check_in_features(in_features: int, m: int) -> None:
    if in_features <= 0 or in_features % m:
        raise ValueError(f"N:M sparsity groups {m} consecutive inputs: in_features must be a positive multiple of {m}, "
                         f"got {in_features}")


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask [out, in] keeping the n largest scores of every m consecutive columns (ties: lower column)."""
    check_nm(n, m)
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out_features, in_features], got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    check_in_features(cols, m)
    s = scores.detach().to(torch.float32).reshape(rows, cols // m, m)
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    # stable descending sort keeps the lower column among equal scores
    keep = torch.sort(s, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


def is_nm(mask: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of m consecutive columns of mask [out, in] keeps exactly n."""
    rows, cols = mask.shape
    if cols % m:
        return False
    return bool((mask.reshape(rows, cols // m, m).sum(-1) == n).all())


def pack_bitmask(mask: torch.Tensor) -> torch.Tensor:
    """Bool [rows, cols] -> uint8 [rows, ceil(cols / 8)], bit j % 8 of byte j // 8 = column j."""
    rows, cols = mask.shape
    pad = (-cols) % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).reshape(rows, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=mask.device)).to(torch.uint8)
    return (bits * weights).sum(-1, dtype=torch.int32).to(torch.uint8)


def unpack_bitmask(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 [rows, ceil(cols / 8)] -> bool [rows, cols] (inverse of pack_bitmask)."""
    if bitmask.dtype != torch.uint8 or bitmask.dim() != 2:
        raise ValueError(f"bitmask must be a 2-D uint8 tensor, got {bitmask.dtype} of shape {tuple(bitmask.shape)}")
    if bitmask.shape[1] != -(-cols // 8):
        raise ValueError(f"bitmask of {cols} columns must have {-(-cols // 8)} bytes per row, got {bitmask.shape[1]}")
    shifts = torch.arange(8, dtype=torch.int32, device=bitmask.device)
    bits = (bitmask.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :cols].to(torch.bool)


def compress(weight: torch.Tensor, mask: torch.Tensor, n: int = 2, m: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [out, in * n / m], bitmask) of weight [out, in] under an N:M mask; values keep weight's dtype."""
    check_nm(n, m)
    if weight.dim() != 2 or tuple(mask.shape) != tuple(weight.shape):
        raise ValueError(f"weight must be 2-D and mask of the same shape, got {tuple(weight.shape)} and "
                         f"{tuple(mask.shape)}")
    check_in_features(weight.shape[1], m)
    mask = mask.to(torch.bool)
    if not is_nm(mask, n, m):
        raise ValueError(f"mask is not {n}:{m}: every group of {m} consecutive inputs must keep exactly {n}")
    rows, cols = weight.shape
    values = weight[mask].reshape(rows, cols * n // m)
    return values, pack_bitmask(mask)


def check_compressed(values: torch.Tensor, bitmask: torch.Tensor, shape, n: int = 2, m: int = 4) -> torch.Tensor:
    """Checks that values and bitmask are an N:M weight of this shape; returns the bool mask [out, in]."""
    rows, cols = (int(s) for s in shape)
    check_nm(n, m)
    check_in_features(cols, m)
    if values.dim() != 2 or tuple(values.shape) != (rows, cols * n // m):
        raise ValueError(f"values of a {n}:{m} [{rows}, {cols}] weight must have shape [{rows}, {cols * n // m}], got "
                         f"{tuple(values.shape)}")
    if bitmask.shape[0] != rows:
        raise ValueError(f"bitmask has {bitmask.shape[0]} rows, the weight {rows}")
    mask = unpack_bitmask(bitmask, cols)
    if not is_nm(mask, n, m):
        raise ValueError(f"bitmask is not {n}:{m}: every group of {m} consecutive inputs must keep exactly {n}")
    return mask


def decompress(values: torch.Tensor, bitmask: torch.Tensor, shape, n: int = 2, m: int = 4) -> torch.Tensor:
    """The dense weight [out, in] (zeros where pruned) in values' dtype; checks that bitmask is N:M."""
    mask = check_compressed(values, bitmask, shape, n, m)
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    dense[mask] = values.reshape(-1)
    return dense


def reference_gemm(x: torch.Tensor, values: torch.Tensor, bitmask: torch.Tensor, bias: torch.Tensor | None,
                   in_features: int, n: int = 2, m: int = 4) -> torch.Tensor:
    """The spec of the sparse GEMM: y = x @ decompress(values, bitmask)^T + bias, accumulated in fp32 (fp64 for fp64
    inputs), returned in x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = decompress(values, bitmask, (values.shape[0], in_features), n, m).to(acc)
    y = x.to(acc) @ w.t()
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(x.dtype)
