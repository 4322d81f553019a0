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


# ------------------------------------------------------------------------------------------------- 2:4 + int4
# The kept values of a 2:4 weight quantized with GPTQ's grid (the joint SparseGPT + GPTQ pass):
#   qvalues  uint8 [out, in / 4]   the 4-bit codes (0..15) of each row's kept values in column order, two per byte,
#            kept value j in byte j // 2, the low nibble for even j (so the bytes read as little-endian int32 are
#            compressed-tensors' pack-quantized words of 8 codes, lowest code in the lowest bits)
#   bitmask  as above
#   scales   [out, ceil(in / group_size)] fp16 / bf16 / fp32, one per group_size consecutive *input columns* (the
#            dense weight's columns, as GPTQ groups them; a group of 4 columns never straddles two quantization
#            groups since group_size is a multiple of 4), so a quantization group holds group_size / 2 kept values
#   zeros    uint8 [out, ceil(in / group_size)] the zero points (8 for GPTQ's symmetric grid)
# A kept weight is (code - zero) * scale; the pruned weights are 0.
INT4_BITS = 4


def check_int4_group_size(group_size: int, in_features: int) -> int:
    """The group size in input columns (-1 -> in_features), checked: a positive multiple of 4."""
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    gs = in_features if group_size == -1 else group_size
    if gs <= 0 or gs % 4:
        raise ValueError(f"2:4 + int4 groups must be a positive multiple of 4 input columns (or -1), got {group_size}")
    return gs


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes [rows, cols] in 0..15 (cols even) -> uint8 [rows, cols / 2], low nibble the even column."""
    if codes.dim() != 2 or codes.shape[1] % 2:
        raise ValueError(f"codes must be 2-D with an even number of columns, got shape {tuple(codes.shape)}")
    c = codes.to(torch.int32)
    if bool(((c < 0) | (c > 15)).any()):
        raise ValueError("int4 codes must lie in 0..15")
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [rows, n] -> int32 codes [rows, 2 n] (inverse of pack_int4)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"packed int4 codes must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    p = packed.to(torch.int32)
    return torch.stack([p & 15, p >> 4], dim=-1).reshape(p.shape[0], -1)


def check_int4_groups(scales: torch.Tensor, zeros: torch.Tensor, shape, group_size: int) -> None:
    """Checks the scales and zero points of a 2:4 + int4 weight of this shape [out, in]."""
    rows, cols = (int(s) for s in shape)
    gs = check_int4_group_size(group_size, cols)
    groups = -(-cols // gs)
    if scales.dtype not in FLOAT_DTYPES or tuple(scales.shape) != (rows, groups):
        raise ValueError(f"scales must be fp32/bf16/fp16 [{rows}, {groups}] (group_size {gs}), got {scales.dtype} "
                         f"{tuple(scales.shape)}")
    if zeros.dtype != torch.uint8 or tuple(zeros.shape) != (rows, groups):
        raise ValueError(f"zeros must be uint8 [{rows}, {groups}], got {zeros.dtype} {tuple(zeros.shape)}")
    if bool((zeros > 15).any()):
        raise ValueError("int4 zero points must lie in 0..15")


def check_int4(qvalues: torch.Tensor, bitmask: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, shape,
               group_size: int) -> torch.Tensor:
    """Checks a 2:4 + int4 weight of this shape [out, in]; returns the bool mask [out, in]."""
    rows, cols = (int(s) for s in shape)
    check_in_features(cols, 4)
    if qvalues.dtype != torch.uint8 or tuple(qvalues.shape) != (rows, cols // 4):
        raise ValueError(f"qvalues of a 2:4 + int4 [{rows}, {cols}] weight must be uint8 [{rows}, {cols // 4}], got "
                         f"{qvalues.dtype} {tuple(qvalues.shape)}")
    check_int4_groups(scales, zeros, shape, group_size)
    if bitmask.dim() != 2 or bitmask.shape[0] != rows:
        raise ValueError(f"bitmask must have {rows} rows, got shape {tuple(bitmask.shape)}")
    mask = unpack_bitmask(bitmask, cols)
    if not is_nm(mask, 2, 4):
        raise ValueError("bitmask is not 2:4: every group of 4 consecutive inputs must keep exactly 2")
    return mask


def dequantize_int4_values(qvalues: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, in_features: int,
                           group_size: int) -> torch.Tensor:
    """The kept values [out, in / 2] in fp32: (code - zero) * scale of each one's quantization group."""
    gs = check_int4_group_size(group_size, in_features)
    codes = unpack_int4(qvalues).to(torch.float32)
    group = (torch.arange(in_features // 2, device=qvalues.device) // 2 * 4) // gs  # kept j sits in columns 4 (j // 2)..
    s = scales.to(torch.float32)[:, group]
    z = zeros.to(torch.float32)[:, group]
    return (codes - z) * s


# The kernel layout of 2:4 + int4 ("tiles"), what Sparse24QuantLinear keeps in memory and the op reads (the layout
# above is the checkpoint's): rows in tiles of 4, inputs in blocks of 128 (K padded up to a multiple of 128, N to a
# multiple of 4), tiles [ceil(N / 4), blocks * 192] uint8, each tile's blocks one after another, each block
#   bytes   0..127  the codes of the tile's 4 rows, 32 bytes a row: byte i holds kept value i of the block (its 64
#                   kept values in column order) in the low nibble and kept value 32 + i in the high one
#   bytes 128..191  the positions of the 4 rows, 16 bytes a row: one nibble a group of 4 inputs (the low nibble the
#                   even group), first kept column | second kept column << 2 (first < second)
# Padding groups keep columns 0 and 1 (nibble 0x4) with code 0. One tile is one sequential stream for the kernel
# (4 rows' codes and positions side by side), and the activation index of a kept value is a 2-bit field instead of a
# table lookup of the bitmask (csrc/sparse24/sparse24_cpu_int4.h).
TILE_ROWS, TILE_BLOCK, TILE_BLOCK_BYTES = 4, 128, 192


def int4_tiles_shape(out_features: int, in_features: int) -> tuple[int, int]:
    return -(-out_features // TILE_ROWS), -(-in_features // TILE_BLOCK) * TILE_BLOCK_BYTES


def pack_int4_tiles(qvalues: torch.Tensor, bitmask: torch.Tensor, in_features: int) -> torch.Tensor:
    """(qvalues, bitmask) of the checkpoint layout -> the kernel layout (tiles); checks that the mask is 2:4."""
    N, K = qvalues.shape[0], in_features
    check_in_features(K, 4)
    mask = unpack_bitmask(bitmask, K)
    if not is_nm(mask, 2, 4):
        raise ValueError("bitmask is not 2:4: every group of 4 consecutive inputs must keep exactly 2")
    if qvalues.dtype != torch.uint8 or tuple(qvalues.shape) != (N, K // 4):
        raise ValueError(f"qvalues must be uint8 [{N}, {K // 4}], got {qvalues.dtype} {tuple(qvalues.shape)}")
    T, B = -(-N // TILE_ROWS), -(-K // TILE_BLOCK)
    Np, dev = T * TILE_ROWS, qvalues.device
    codes = torch.zeros(Np, B * 64, dtype=torch.int32, device=dev)
    codes[:N, :K // 2] = unpack_int4(qvalues)
    codes = codes.view(Np, B, 2, 32)
    code_bytes = (codes[:, :, 0] | (codes[:, :, 1] << 4)).to(torch.uint8)  # [Np, B, 32]
    col = torch.arange(4, device=dev, dtype=torch.int32)
    g = mask.view(N, K // 4, 4)
    first = torch.where(g, col, 4).amin(-1)
    second = torch.where(g, col, -1).amax(-1)
    nib = torch.full((Np, B * 32), 0x4, dtype=torch.int32, device=dev)
    nib[:N, :K // 4] = first | (second << 2)
    nib = nib.view(Np, B, 16, 2)
    pos_bytes = (nib[..., 0] | (nib[..., 1] << 4)).to(torch.uint8)  # [Np, B, 16]
    c = code_bytes.view(T, TILE_ROWS, B, 32).permute(0, 2, 1, 3).reshape(T, B, 128)
    p = pos_bytes.view(T, TILE_ROWS, B, 16).permute(0, 2, 1, 3).reshape(T, B, 64)
    return torch.cat([c, p], dim=-1).reshape(T, B * TILE_BLOCK_BYTES).contiguous()


def unpack_int4_tiles(tiles: torch.Tensor, out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel layout -> (qvalues, bitmask) of the checkpoint layout; checks every position nibble."""
    N, K = out_features, in_features
    check_in_features(K, 4)
    T, W = int4_tiles_shape(N, K)
    if tiles.dtype != torch.uint8 or tuple(tiles.shape) != (T, W):
        raise ValueError(f"tiles of a 2:4 + int4 [{N}, {K}] weight must be uint8 [{T}, {W}], got {tiles.dtype} "
                         f"{tuple(tiles.shape)}")
    B, Np = W // TILE_BLOCK_BYTES, T * TILE_ROWS
    t = tiles.view(T, B, TILE_BLOCK_BYTES).to(torch.int32)
    c = t[:, :, :128].reshape(T, B, TILE_ROWS, 32).permute(0, 2, 1, 3).reshape(Np, B, 32)
    codes = torch.cat([c & 15, c >> 4], dim=-1).reshape(Np, B * 64)[:N, :K // 2]
    p = t[:, :, 128:].reshape(T, B, TILE_ROWS, 16).permute(0, 2, 1, 3).reshape(Np, B, 16)
    nib = torch.stack([p & 15, p >> 4], dim=-1).reshape(Np, B * 32)[:N, :K // 4]
    first, second = nib & 3, nib >> 2
    if bool((first >= second).any()):
        raise ValueError("tiles hold a position nibble whose first column is not below its second (not 2:4)")
    col = torch.arange(4, device=tiles.device, dtype=torch.int32)
    mask = (col == first[..., None]) | (col == second[..., None])
    return pack_int4(codes), pack_bitmask(mask.reshape(N, K))


def reference_int4_tiles_gemm(x: torch.Tensor, tiles: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                              bias: torch.Tensor | None, in_features: int, group_size: int) -> torch.Tensor:
    """The spec of slimformer::sparse24_int4_gemm: reference_int4_gemm on the unpacked tiles."""
    qvalues, bitmask = unpack_int4_tiles(tiles, scales.shape[0], in_features)
    return reference_int4_gemm(x, qvalues, bitmask, scales, zeros, bias, in_features, group_size)


def reference_int4_gemm(x: torch.Tensor, qvalues: torch.Tensor, bitmask: torch.Tensor, scales: torch.Tensor,
                        zeros: torch.Tensor, bias: torch.Tensor | None, in_features: int,
                        group_size: int) -> torch.Tensor:
    """The spec of the 2:4 + int4 GEMM: reference_gemm with the dequantized kept values (fp32; fp64 for fp64 x)."""
    values = dequantize_int4_values(qvalues, scales, zeros, in_features, group_size)
    if x.dtype == torch.float64:
        values = values.to(torch.float64)
    return reference_gemm(x, values, bitmask, bias, in_features)
