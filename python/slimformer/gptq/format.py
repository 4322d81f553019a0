"""GPTQ weight format: Hub-layout pack/unpack, the kernel ("tiled32") layout, and the pure-PyTorch reference of
every GPTQ op. This file is the spec the native kernels are tested against.

Hub GPTQ layout (AutoGPTQ / GPTQModel / transformers), for a linear layer with K inputs and N outputs:
  qweight  int32 [K * bits / 32, N]   rows packed along K, one little-endian bit stream per column
  qzeros   int32 [G, N * bits / 32]   zero points packed along N the same way
                                      ("gptq" = v1 stores zero - 1, "gptq_v2" stores the true zero)
  scales   fp16  [G, N]
  g_idx    int32 [K]                  group of each input row (non-monotonic under act-order)
  W[k, n] = scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n]);   y = x @ W + bias

Kernel layout (csrc/gptq/gptq_layout.h), shared by the CPU and CUDA kernels:
  qtiles      int32 [ceil(N/32), K * bits / 32, 32]   32-column tiles of the row-packed kernel words: the Hub
                                                      stream for 2/4/8 bits, the int3 kernel encoding for 3 bits
                                                      (pack_kernel_rows, csrc/gptq/gptq_decode.h)
  scale_zero  fp16  [ceil(N/32), G, 2, 32]            scale and zero (the kernels form scale * zero in fp32)
  perm        int64 [K] or None                       act-order rows sorted by group; x is read as x[..., perm]
"""
from __future__ import annotations

import torch

from ..formats import gptq_format

TILE_COLS = 32
CHECKPOINT_FORMATS = ("gptq", "gptq_v2")


def _check_bits(bits: int):
    return gptq_format(bits)


def _value_units(values: torch.Tensor, bits: int, what: str):
    """Checks integers [K, N] for `bits`-bit packing; returns them as int64 [units, values_per_unit, N]."""
    fmt = _check_bits(bits)
    if values.dim() != 2:
        raise ValueError(f"{what} expects a 2-D tensor [K, N], got shape {tuple(values.shape)}")
    K, N = values.shape
    if K % fmt.values_per_unit:
        raise ValueError(f"{bits}-bit packing needs K to be a multiple of {fmt.values_per_unit}, got K={K}")
    v = values.to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= (1 << bits)):
        raise ValueError(f"values must lie in [0, {1 << bits}) for {bits}-bit packing")
    return v.reshape(K // fmt.values_per_unit, fmt.values_per_unit, N)


def _words_from_units(words: torch.Tensor) -> torch.Tensor:
    """uint32 values held in int64 [units, words_per_unit, N] -> int32 words [units * words_per_unit, N]."""
    words = words.reshape(-1, words.shape[-1])
    return (words - ((words >> 31) << 32)).to(torch.int32)  # reinterpret uint32 as int32


def _word_units(words: torch.Tensor, bits: int, K: int | None, what: str):
    """Checks int32 words [W, N]; returns them as uint32 values in int64 [units, words_per_unit, N]."""
    fmt = _check_bits(bits)
    if words.dim() != 2 or words.dtype != torch.int32:
        raise ValueError(f"{what} expects 2-D int32 words, got {words.dtype} of shape {tuple(words.shape)}")
    W, N = words.shape
    if W % fmt.words_per_unit:
        raise ValueError(f"{bits}-bit words come in units of {fmt.words_per_unit}, got {W} rows of words")
    units = W // fmt.words_per_unit
    if K is not None and K != units * fmt.values_per_unit:
        raise ValueError(f"{W} rows of {bits}-bit words hold {units * fmt.values_per_unit} values, expected K={K}")
    return (words.to(torch.int64) & 0xFFFFFFFF).reshape(units, fmt.words_per_unit, N)


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integers [K, N] in [0, 2^bits) along dim 0 into int32 words [K * bits / 32, N] (Hub qweight)."""
    v = _value_units(values, bits, "pack_rows")
    fmt = _check_bits(bits)
    words = torch.zeros(v.shape[0], fmt.words_per_unit, v.shape[2], dtype=torch.int64, device=values.device)
    for r in range(fmt.values_per_unit):
        w, s = divmod(bits * r, 32)
        words[:, w] |= (v[:, r] << s) & 0xFFFFFFFF
        if s + bits > 32:  # the value straddles into the next word
            words[:, w + 1] |= v[:, r] >> (32 - s)
    return _words_from_units(words)


def unpack_rows(words: torch.Tensor, bits: int, K: int | None = None) -> torch.Tensor:
    """Inverse of pack_rows: int32 words [K * bits / 32, N] -> int32 values [K, N]."""
    w64 = _word_units(words, bits, K, "unpack_rows")
    fmt = _check_bits(bits)
    out = torch.empty(w64.shape[0], fmt.values_per_unit, w64.shape[2], dtype=torch.int64, device=words.device)
    for r in range(fmt.values_per_unit):
        w, s = divmod(bits * r, 32)
        v = w64[:, w] >> s
        if s + bits > 32:
            v = v | (w64[:, w + 1] << (32 - s))
        out[:, r] = v & ((1 << bits) - 1)
    return out.reshape(-1, w64.shape[2]).to(torch.int32)


INT3_SPARE_BIT = 6


def _int3_field_bit(f: int) -> int:
    return 3 * f if f < 2 else 3 * f + 1


def kernel_value_position(bits: int, r: int) -> tuple[int, int] | None:
    """(word, shift) of value r of a packing unit in the kernel layout, or None for an int3 "sliced" value
    (r = 30, 31: bit i is bit INT3_SPARE_BIT (+16 for r = 31) of word i). Mirrors csrc/gptq/gptq_decode.h."""
    if bits != 3:
        return divmod(bits * r, 32)
    if r >= 30:
        return None
    return r // 10, 16 * ((r % 10) // 5) + _int3_field_bit(r % 5)


def pack_kernel_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integers [K, N] along dim 0 into the kernel layout's words [K * bits / 32, N]: the Hub stream
    (pack_rows) for 2/4/8 bits; for 3 bits the int3 kernel encoding, in which each 16-bit half of a word holds five
    3-bit fields (at bits 0, 3, 7, 10, 13) and the spare bits of a unit's 3 words hold its values 30 and 31."""
    if bits != 3:
        return pack_rows(values, bits)
    v = _value_units(values, bits, "pack_kernel_rows")
    fmt = _check_bits(bits)
    words = torch.zeros(v.shape[0], fmt.words_per_unit, v.shape[2], dtype=torch.int64, device=values.device)
    for r in range(fmt.values_per_unit):
        pos = kernel_value_position(bits, r)
        if pos is None:
            for i in range(bits):
                words[:, i] |= ((v[:, r] >> i) & 1) << (INT3_SPARE_BIT + 16 * (r - 30))
        else:
            words[:, pos[0]] |= v[:, r] << pos[1]
    return _words_from_units(words)


def unpack_kernel_rows(words: torch.Tensor, bits: int, K: int | None = None) -> torch.Tensor:
    """Inverse of pack_kernel_rows: kernel-layout words [K * bits / 32, N] -> int32 values [K, N]."""
    if bits != 3:
        return unpack_rows(words, bits, K)
    w64 = _word_units(words, bits, K, "unpack_kernel_rows")
    fmt = _check_bits(bits)
    out = torch.empty(w64.shape[0], fmt.values_per_unit, w64.shape[2], dtype=torch.int64, device=words.device)
    for r in range(fmt.values_per_unit):
        pos = kernel_value_position(bits, r)
        if pos is None:
            shift = INT3_SPARE_BIT + 16 * (r - 30)
            out[:, r] = sum(((w64[:, i] >> shift) & 1) << i for i in range(bits))
        else:
            out[:, r] = (w64[:, pos[0]] >> pos[1]) & ((1 << bits) - 1)
    return out.reshape(-1, w64.shape[2]).to(torch.int32)


def pack_cols(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs integers [G, N] along dim 1 into int32 [G, N * bits / 32] (Hub qzeros)."""
    return pack_rows(values.t(), bits).t().contiguous()


def unpack_cols(words: torch.Tensor, bits: int, N: int | None = None) -> torch.Tensor:
    return unpack_rows(words.t().contiguous(), bits, N).t().contiguous()


def _check_checkpoint_format(checkpoint_format: str):
    if checkpoint_format not in CHECKPOINT_FORMATS:
        raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")


def _v1_word_offset(bits: int) -> int:
    """1 in every bits-wide field of an int32 word (2/4/8 bits): what GPTQModel subtracts from v2 words for v1."""
    return sum(1 << (bits * i) for i in range(32 // bits))


def zeros_from_qzeros(qzeros: torch.Tensor, bits: int, N: int, checkpoint_format: str, *,
                      carry: bool = False) -> torch.Tensor:
    """True integer zero points [G, N] from Hub qzeros. v1 ("gptq") stores zero - 1, and two writers form it
    differently:
      carry=False  AutoGPTQ (and slimformer): field by field, read back as stored + 1 without wrap-around (a field
                   that stored 2^bits - 1 reads 2^bits, as AutoGPTQ's kernels compute it);
      carry=True   GPTQModel: whole int32 words minus 1 in every field (2/4/8 bits), so a zero of 0 borrows from the
                   next field; read back by adding the same word with carry. At 3 bits it wraps per field."""
    _check_checkpoint_format(checkpoint_format)
    if checkpoint_format == "gptq" and carry:
        if bits == 3:
            return (unpack_cols(qzeros, bits, N) + 1) & 7
        _check_bits(bits)
        words = (qzeros.to(torch.int64) + _v1_word_offset(bits)) & 0xFFFFFFFF
        return unpack_cols(_words_from_units(words.unsqueeze(0)).reshape(qzeros.shape), bits, N)
    z = unpack_cols(qzeros, bits, N)
    return z + 1 if checkpoint_format == "gptq" else z


def qzeros_from_zeros(zeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    _check_checkpoint_format(checkpoint_format)
    z = zeros.to(torch.int64)
    if checkpoint_format == "gptq":
        if z.numel() and (int(z.min()) < 1 or int(z.max()) > (1 << bits)):
            raise ValueError(
                f"checkpoint_format='gptq' (v1) stores zero - 1 in {bits} bits, so zero points must lie in "
                f"[1, {1 << bits}]; this layer has zeros in [{int(z.min())}, {int(z.max())}]: save it with "
                "checkpoint_format='gptq_v2'")
        z = (z - 1) & ((1 << bits) - 1)
    return pack_cols(z, bits)


def default_g_idx(K: int, group_size: int, device=None) -> torch.Tensor:
    return torch.arange(K, dtype=torch.int32, device=device) // group_size


def resolve_group_size(group_size: int, K: int) -> int:
    if group_size == -1:
        return K
    if not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int or -1 (per-channel), got {group_size!r}")
    return group_size


def check_hub_tensors(qweight, qzeros, scales, g_idx, bias, *, bits: int, group_size: int, in_features: int,
                      out_features: int):
    """Raises ValueError naming the expected and actual shape/dtype of any mismatched Hub-layout tensor."""
    _check_bits(bits)
    K, N = in_features, out_features
    G = -(-K // group_size)
    expect = {
        "qweight": (qweight, torch.int32, (K * bits // 32, N)),
        "qzeros": (qzeros, torch.int32, (G, N * bits // 32)),
        "scales": (scales, None, (G, N)),
    }
    if g_idx is not None:
        expect["g_idx"] = (g_idx, None, (K,))
    if bias is not None:
        expect["bias"] = (bias, None, (N,))
    for name, (t, dtype, shape) in expect.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} for in_features={K}, out_features={N}, "
                             f"bits={bits}, group_size={group_size}; got {list(t.shape)}")
        if dtype is not None and t.dtype != dtype:
            raise ValueError(f"{name} must be {dtype}, got {t.dtype}")
    if not scales.is_floating_point():
        raise ValueError(f"scales must be a floating-point tensor, got {scales.dtype}")
    if g_idx is not None:
        if g_idx.is_floating_point() or g_idx.is_complex():
            raise ValueError(f"g_idx must be an integer tensor, got {g_idx.dtype}")
        if K and (int(g_idx.min()) < 0 or int(g_idx.max()) >= G):
            raise ValueError(f"g_idx values must lie in [0, {G}), got [{int(g_idx.min())}, {int(g_idx.max())}]")


def act_order_perm(g_idx: torch.Tensor, group_size: int) -> torch.Tensor | None:
    """Row order that makes groups contiguous, or None when g_idx is already k // group_size.

    GPTQ's act-order assigns each group exactly group_size rows (the last one possibly fewer), so after a stable
    sort by group the rows of group g are [g * group_size, (g + 1) * group_size)."""
    K = g_idx.numel()
    g = g_idx.to(torch.int64).cpu()
    natural = torch.arange(K, dtype=torch.int64) // group_size
    if torch.equal(g, natural):
        return None
    perm = torch.sort(g, stable=True).indices
    if not torch.equal(g[perm], natural):
        raise ValueError(f"g_idx must give every group exactly group_size={group_size} rows (the last group may "
                         "be shorter); this g_idx does not, so it cannot come from GPTQ act-order")
    return perm


def to_kernel_layout(qweight, qzeros, scales, g_idx, *, bits: int, group_size: int, in_features: int,
                     out_features: int, checkpoint_format: str = "gptq"):
    """Hub tensors -> (qtiles, scale_zero, perm). Runs once per layer at load time."""
    K, N = in_features, out_features
    q = unpack_rows(qweight, bits, K)
    zeros = zeros_from_qzeros(qzeros, bits, N, checkpoint_format).to(torch.float32)
    perm = act_order_perm(g_idx, group_size) if g_idx is not None else None
    if perm is not None:
        q = q[perm.to(q.device)]
    n_tiles = -(-N // TILE_COLS)
    pad = n_tiles * TILE_COLS - N
    words = pack_kernel_rows(q, bits)
    words = torch.nn.functional.pad(words, (0, pad))
    qtiles = words.reshape(words.shape[0], n_tiles, TILE_COLS).permute(1, 0, 2).contiguous()
    # Zero points are unpacked from fields of at most 8 bits (v1 adds 1): integers <= 256, exact in fp16.
    s = torch.nn.functional.pad(scales.to(torch.float16), (0, pad))
    sz = torch.nn.functional.pad(zeros.to(torch.float16), (0, pad))
    G = s.shape[0]
    scale_zero = torch.stack([s, sz], 1).reshape(G, 2, n_tiles, TILE_COLS).permute(2, 0, 1, 3).contiguous()
    return qtiles, scale_zero, perm


def qweight_from_kernel_layout(qtiles: torch.Tensor, perm: torch.Tensor | None, *, bits: int, in_features: int,
                               out_features: int) -> torch.Tensor:
    """Kernel layout -> Hub qweight (exact inverse of to_kernel_layout's packing)."""
    n_tiles, KW, _ = qtiles.shape
    words = qtiles.permute(1, 0, 2).reshape(KW, n_tiles * TILE_COLS)[:, :out_features].contiguous()
    if perm is None and bits != 3:  # the kernel words are the Hub words
        return words
    q = unpack_kernel_rows(words, bits, in_features)
    if perm is None:
        return pack_rows(q, bits)
    restored = torch.empty_like(q)
    restored[perm.to(q.device)] = q
    return pack_rows(restored, bits)


# ---------------------------------------------------------------------------------------------------------------
# Pure-PyTorch references (the spec of every op; also the fallback when the native extension is missing).
# ---------------------------------------------------------------------------------------------------------------

def reference_dequantize(qweight, qzeros, scales, g_idx, *, bits: int, group_size: int, in_features: int,
                         out_features: int, checkpoint_format: str = "gptq",
                         dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """W [K, N] from Hub tensors: scales[g_idx[k], n] * (q[k, n] - zero[g_idx[k], n])."""
    K, N = in_features, out_features
    q = unpack_rows(qweight, bits, K).to(dtype)
    z = zeros_from_qzeros(qzeros, bits, N, checkpoint_format).to(dtype)
    if g_idx is None:
        g_idx = default_g_idx(K, group_size, qweight.device)
    g = g_idx.to(torch.int64)
    return scales.to(dtype)[g] * (q - z[g])


def reference_gemm(x, qweight, qzeros, scales, g_idx, bias=None, *, bits: int, group_size: int, in_features: int,
                   out_features: int, checkpoint_format: str = "gptq", dtype: torch.dtype = torch.float64):
    W = reference_dequantize(qweight, qzeros, scales, g_idx, bits=bits, group_size=group_size,
                             in_features=in_features, out_features=out_features,
                             checkpoint_format=checkpoint_format, dtype=dtype)
    y = x.to(dtype) @ W
    if bias is not None:
        y = y + bias.to(dtype)
    return y


def reference_tiled_dequantize(qtiles, scale_zero, *, bits: int, group_size: int, in_features: int,
                               out_features: int) -> torch.Tensor:
    """Spec of slimformer::gptq_dequantize: W [K, N] float32 in kernel row order."""
    K, N = in_features, out_features
    n_tiles, KW, _ = qtiles.shape
    words = qtiles.permute(1, 0, 2).reshape(KW, n_tiles * TILE_COLS)
    q = unpack_kernel_rows(words.contiguous(), bits, K).to(torch.float32)
    G = scale_zero.shape[1]
    sz = scale_zero.permute(1, 2, 0, 3).reshape(G, 2, n_tiles * TILE_COLS).to(torch.float32)
    g = torch.arange(K, device=qtiles.device) // min(group_size, K)
    s = sz[g, 0]
    W = q * s - s * sz[g, 1]  # as the kernels: scale * zero is exact in fp32
    return W[:, :N].contiguous()


def reference_tiled_gemm(x, qtiles, scale_zero, perm, bias, *, bits: int, group_size: int, in_features: int,
                         out_features: int) -> torch.Tensor:
    """Spec of slimformer::gptq_gemm: y = x[..., perm] @ W + bias, computed in float32, output in x.dtype."""
    W = reference_tiled_dequantize(qtiles, scale_zero, bits=bits, group_size=group_size, in_features=in_features,
                                   out_features=out_features)
    xk = x.to(torch.float32)
    if perm is not None:
        xk = xk[..., perm]
    y = xk @ W
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


A8_BLOCK = 128  # activation block of the int8 mode (csrc/gptq/gptq_cpu.h: kI16Block)


def quantize_activations_a8(xk: torch.Tensor, *, group_size: int, in_features: int):
    """The int8 activation mode's quantization of kernel-order activations xk [M, K] (float32): per row and block
    of up to A8_BLOCK values inside each group, x8 = round_half_even(x * (127 / amax)) and scale = amax / 127, all
    in float32 as the kernel computes them. Returns x8 [M, K] (float32 holding integers) and per-value scales
    [M, K]."""
    K = in_features
    gs = min(group_size, K)
    x8 = torch.zeros_like(xk)
    scale = torch.zeros_like(xk)
    for g0 in range(0, K, gs):
        for k0 in range(g0, min(g0 + gs, K), A8_BLOCK):
            k1 = min(k0 + A8_BLOCK, g0 + gs, K)
            blk = xk[:, k0:k1]
            amax = blk.abs().amax(dim=1, keepdim=True)
            # 127 / amax as one correctly rounded fp32 division, as the kernel computes it (torch's scalar / tensor
            # is reciprocal(amax) * 127, which differs in the last bit for a quarter of the values)
            inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
            x8[:, k0:k1] = torch.round(blk * inv)
            scale[:, k0:k1] = amax / 127.0
    return x8, scale


def reference_tiled_gemm_a8(x, qtiles, scale_zero, perm, bias, *, bits: int, group_size: int, in_features: int,
                            out_features: int) -> torch.Tensor:
    """Spec of slimformer::gptq_gemm_a8 (the int8 activation mode): x[..., perm] quantized per row and block by
    quantize_activations_a8, times W, in float64; output in x.dtype. Blocks whose rows hold inf or NaN are not
    quantized by the kernel (it falls back to gptq_gemm); this reference does not model that case."""
    if bits != 4:
        raise ValueError(f"the int8 activation mode needs 4-bit weights, got bits={bits}")
    W = reference_tiled_dequantize(qtiles, scale_zero, bits=bits, group_size=group_size, in_features=in_features,
                                   out_features=out_features).to(torch.float64)
    xk = x.to(torch.float32).reshape(-1, in_features)
    if perm is not None:
        xk = xk[:, perm]
    x8, scale = quantize_activations_a8(xk, group_size=group_size, in_features=in_features)
    y = (x8.to(torch.float64) * scale.to(torch.float64)) @ W
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.reshape(*x.shape[:-1], out_features).to(x.dtype)
