"""Thin Python face of the native ops: loads slimformer._C (which registers torch.ops.slimformer.*), declares the
fake (meta) implementation of every op beside it so torch.compile traces through without graph breaks, and falls
back to the pure-PyTorch references, with one clear warning, when the extension is missing."""
from __future__ import annotations

import warnings

import torch

from .gptq import format as gptq_format

try:
    from . import _C  # noqa: F401  (importing registers the ops)
    HAS_NATIVE = True
    _NATIVE_ERROR = None
except ImportError as e:  # pragma: no cover - exercised only in a broken install
    HAS_NATIVE = False
    _NATIVE_ERROR = e

_warned = False


def _warn_fallback():
    global _warned
    if not _warned:
        warnings.warn(f"slimformer native extension not available ({_NATIVE_ERROR}); using the slow pure-PyTorch "
                      "reference kernels. Reinstall with `pip install --no-build-isolation .`", RuntimeWarning,
                      stacklevel=3)
        _warned = True


if HAS_NATIVE:
    def _same_device(**tensors):
        # The fake doubles as the Meta kernel: a call mixing meta weights with real activations dispatches here and
        # must fail, not hand back uninitialised memory.
        devices = {name: t.device for name, t in tensors.items() if t is not None}
        first = next(iter(devices.values()))
        torch._check(all(d == first for d in devices.values()),
                     lambda: f"all tensors must be on one device, got {', '.join(f'{n} on {d}' for n, d in devices.items())}")

    def _gptq_gemm_fake(x, qtiles, scale_zero, perm, bias, bits, group_size, in_features, out_features):
        _same_device(x=x, qtiles=qtiles, scale_zero=scale_zero, perm=perm, bias=bias)
        torch._check(x.shape[-1] == in_features, lambda: f"x must end in {in_features}, got {tuple(x.shape)}")
        return x.new_empty((*x.shape[:-1], out_features))

    # Both GEMM ops (exact and int8 activation mode) share a schema and an output shape.
    torch.library.register_fake("slimformer::gptq_gemm")(_gptq_gemm_fake)
    torch.library.register_fake("slimformer::gptq_gemm_a8")(_gptq_gemm_fake)

    @torch.library.register_fake("slimformer::gptq_dequantize")
    def _gptq_dequantize_fake(qtiles, scale_zero, bits, group_size, in_features, out_features):
        _same_device(qtiles=qtiles, scale_zero=scale_zero)
        return scale_zero.new_empty((in_features, out_features), dtype=torch.float32)

    @torch.library.register_fake("slimformer::sparse24_gemm")
    def _sparse24_gemm_fake(x, values, bitmask, bias, in_features):
        _same_device(x=x, values=values, bitmask=bitmask, bias=bias)
        torch._check(x.shape[-1] == in_features, lambda: f"x must end in {in_features}, got {tuple(x.shape)}")
        return x.new_empty((*x.shape[:-1], values.shape[0]))

    @torch.library.register_fake("slimformer::sparse24_int4_gemm")
    def _sparse24_int4_gemm_fake(x, tiles, scales, zeros, bias, in_features, group_size):
        _same_device(x=x, tiles=tiles, scales=scales, zeros=zeros, bias=bias)
        torch._check(x.shape[-1] == in_features, lambda: f"x must end in {in_features}, got {tuple(x.shape)}")
        return x.new_empty((*x.shape[:-1], scales.shape[0]))

    @torch.library.register_fake("slimformer::_sparse24_mma_emulate")
    def _sparse24_mma_emulate_fake(x, values, bitmask, bias, in_features):
        return _sparse24_gemm_fake(x, values, bitmask, bias, in_features)

    @torch.library.register_fake("slimformer::token_attention")
    def _token_attention_fake(q, k, v, key_bias, keep, head_weights, need_out, need_probs):
        _same_device(q=q, k=k, v=v, key_bias=key_bias, keep=keep, head_weights=head_weights)
        B, N, H, D = q.shape
        n = keep.shape[1] if keep is not None else N
        return (q.new_empty((B, n, H, D)) if need_out else q.new_empty((0,)), q.new_empty((B, H, n)),
                q.new_empty((B, n, n)) if need_probs else q.new_empty((0,)))

    @torch.library.register_fake("slimformer::token_attention_head_filtered")
    def _token_attention_head_filtered_fake(q, k, v, key_bias, keep, low, high):
        _same_device(q=q, k=k, v=v, key_bias=key_bias, keep=keep)
        B, N, H, D = q.shape
        n = keep.shape[1] if keep is not None else N
        return q.new_empty((B, n, H, D)), q.new_empty((B, H, n)), q.new_empty((B, n, n)), q.new_empty((B, H))

    @torch.library.register_fake("slimformer::wpr")
    def _wpr_fake(attn, s, iterations):
        _same_device(attn=attn, s=s)
        return s.new_empty(s.shape)

    @torch.library.register_fake("slimformer::cpu_hugepage_copy")
    def _cpu_hugepage_copy_fake(t):
        return t.new_empty(t.shape)

    @torch.library.register_fake("slimformer::_unpack_bits")
    def _unpack_bits_fake(words, bits, count):
        return words.new_empty((count, words.shape[1]))


def cpu_isa() -> str:
    """The CPU path the kernels take now (honours SLIMFORMER_CPU_ISA)."""
    return torch.ops.slimformer.cpu_isa() if HAS_NATIVE else "reference"


def cpu_features() -> str:
    return torch.ops.slimformer.cpu_features() if HAS_NATIVE else "native extension not built"


def gptq_gemm(x, qtiles, scale_zero, perm, bias, bits: int, group_size: int, in_features: int,
              out_features: int) -> torch.Tensor:
    if HAS_NATIVE:
        # The resolved overload, not the packet: saves a Python-level overload lookup on every decode-step call.
        return torch.ops.slimformer.gptq_gemm.default(x, qtiles, scale_zero, perm, bias, bits, group_size,
                                                      in_features, out_features)
    _warn_fallback()
    return gptq_format.reference_tiled_gemm(x, qtiles, scale_zero, perm, bias, bits=bits, group_size=group_size,
                                            in_features=in_features, out_features=out_features)


def gptq_gemm_a8(x, qtiles, scale_zero, perm, bias, bits: int, group_size: int, in_features: int,
                 out_features: int) -> torch.Tensor:
    """The int8 activation mode of gptq_gemm (4-bit weights, CPU): activations rounded to int8 per row and block of
    up to 128 values, then exact integer products with the weights."""
    if HAS_NATIVE:
        return torch.ops.slimformer.gptq_gemm_a8.default(x, qtiles, scale_zero, perm, bias, bits, group_size,
                                                         in_features, out_features)
    _warn_fallback()
    return gptq_format.reference_tiled_gemm_a8(x, qtiles, scale_zero, perm, bias, bits=bits, group_size=group_size,
                                               in_features=in_features, out_features=out_features)


def gptq_dequantize(qtiles, scale_zero, bits: int, group_size: int, in_features: int,
                    out_features: int) -> torch.Tensor:
    if HAS_NATIVE:
        return torch.ops.slimformer.gptq_dequantize(qtiles, scale_zero, bits, group_size, in_features, out_features)
    _warn_fallback()
    return gptq_format.reference_tiled_dequantize(qtiles, scale_zero, bits=bits, group_size=group_size,
                                                  in_features=in_features, out_features=out_features)


def sparse24_gemm(x, values, bitmask, bias, in_features: int) -> torch.Tensor:
    """y = x @ W^T + bias for a 2:4 sparse W in the sparse-24-bitmask layout (values float32 or bfloat16)."""
    if HAS_NATIVE:
        return torch.ops.slimformer.sparse24_gemm.default(x, values, bitmask, bias, in_features)
    _warn_fallback()
    from .sparse24.format import reference_gemm
    return reference_gemm(x, values, bitmask, bias, in_features)


def sparse24_int4_gemm(x, tiles, scales, zeros, bias, in_features: int, group_size: int) -> torch.Tensor:
    """y = x @ W^T + bias for a 2:4 + int4 W in its kernel layout (sparse24/format.py: tiles from pack_int4_tiles,
    scales and zeros [N, groups])."""
    if HAS_NATIVE:
        return torch.ops.slimformer.sparse24_int4_gemm.default(x, tiles, scales, zeros, bias, in_features, group_size)
    _warn_fallback()
    from .sparse24.format import reference_int4_tiles_gemm
    return reference_int4_tiles_gemm(x, tiles, scales, zeros, bias, in_features, group_size)
