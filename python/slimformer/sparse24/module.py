"""Sparse24Linear: drop-in replacement for nn.Linear with an N:M sparse weight (2:4 by default) stored compressed."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..hugepages import HugePageBuffers
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt


class Sparse24Linear(HugePageBuffers, nn.Module):
    """y = x @ W^T + b where W [out, in] keeps n of every m consecutive inputs (2:4 unless told otherwise).

    Buffers (the compressed-tensors sparse-24-bitmask layout, format.py): `values` [out, in * n / m] in fp32, bf16 or
    fp16, `bitmask` uint8 [out, ceil(in / 8)], `bias` [out] or None. Build one with `from_linear` (magnitude),
    `from_dense` (a weight and its mask), `slimformer.sparse24.prune_weight` (SparseGPT, Wanda), or construct an empty
    layer and load_state_dict into it."""

    _hugepage_buffers = ("values", "bitmask")  # kept on 2 MiB pages on the CPU (HugePageBuffers)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, n: int = 2, m: int = 4,
                 dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        fmt.check_nm(n, m)
        fmt.check_in_features(in_features, m)
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}")
        if dtype not in fmt.FLOAT_DTYPES:
            raise ValueError(f"values dtype must be one of {fmt.FLOAT_DTYPES}, got {dtype}")
        self.in_features, self.out_features, self.n, self.m = in_features, out_features, n, m
        self.register_buffer("values", torch.zeros(out_features, in_features * n // m, dtype=dtype, device=device))
        # an all-zero bitmask is not N:M; a fresh layer keeps the first n of every m until something is loaded
        first = (torch.arange(in_features, device=device) % m < n).expand(out_features, in_features)
        self.register_buffer("bitmask", fmt.pack_bitmask(first))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype, device=device) if bias else None)
        self._hugepage_init()

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None, *, n: int = 2,
                   m: int = 4, dtype: torch.dtype | None = None) -> "Sparse24Linear":
        """A layer holding weight [out, in] where mask (N:M, bool or 0/1) keeps it; values in dtype (default: the
        weight's, fp32 for other dtypes)."""
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a 2-D floating-point tensor [out_features, in_features], got "
                             f"{getattr(weight, 'dtype', type(weight))} of shape {tuple(getattr(weight, 'shape', ()))}")
        if not bool(torch.isfinite(weight).all()):
            raise ValueError("weight holds NaN or inf values")
        if dtype is None:
            dtype = weight.dtype if weight.dtype in fmt.FLOAT_DTYPES else torch.float32
        out_features, in_features = weight.shape
        layer = cls(in_features, out_features, bias is not None, n=n, m=m, dtype=dtype, device=weight.device)
        values, bitmask = fmt.compress(weight.detach().to(dtype), mask, n, m)
        layer.values.copy_(values)
        layer.bitmask.copy_(bitmask)
        if bias is not None:
            if tuple(bias.shape) != (out_features,):
                raise ValueError(f"bias must have shape [{out_features}], got {tuple(bias.shape)}")
            layer.bias.copy_(bias.detach().to(dtype))
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Module, n: int = 2, m: int = 4, dtype: torch.dtype | None = None) -> "Sparse24Linear":
        """Magnitude N:M pruning of an nn.Linear (or transformers Conv1D): keeps the n largest |w| of every m."""
        if not is_linear_like(linear):
            raise TypeError(f"from_linear expects an nn.Linear or transformers Conv1D, got {type(linear).__name__}")
        w = linear_weight(linear).detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"from_linear: the {type(linear).__name__}'s weight holds NaN or inf values")
        return cls.from_dense(w, fmt.nm_mask(w.abs(), n, m), getattr(linear, "bias", None), n=n, m=m, dtype=dtype)

    # ------------------------------------------------------------------------------------------------ access
    @property
    def mask(self) -> torch.Tensor:
        return fmt.unpack_bitmask(self.bitmask, self.in_features)

    def to_dense(self) -> torch.Tensor:
        """The weight [out, in] with its zeros, in the values' dtype."""
        return fmt.decompress(self.values, self.bitmask, (self.out_features, self.in_features), self.n, self.m)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.n}:{self.m}, "
                f"values={self.values.dtype}, bias={self.bias is not None}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # values may arrive in another float dtype (an fp16 checkpoint into an fp32 layer): take the checkpoint's
        values = state_dict.get(prefix + "values")
        if isinstance(values, torch.Tensor) and values.dtype in fmt.FLOAT_DTYPES and values.dtype != self.values.dtype:
            self.values = torch.empty_like(self.values, dtype=values.dtype)
            if self.bias is not None:
                self.bias = torch.empty_like(self.bias, dtype=values.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if tuple(self.bitmask.shape) == (self.out_features, -(-self.in_features // 8)) and not fmt.is_nm(
                self.mask, self.n, self.m):
            error_msgs.append(f"{prefix}bitmask is not {self.n}:{self.m}: every group of {self.m} consecutive inputs "
                              f"must keep exactly {self.n}")

    # ----------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
        if self.n == 2 and self.m == 4 and x.device.type in ("cpu", "cuda") and x.dtype in fmt.FLOAT_DTYPES:
            # the 2:4 kernels (fp16 values are widened to fp32 on each call: store fp32 or bf16 for speed)
            values = self.values if self.values.dtype != torch.float16 else self.values.float()
            return ops.sparse24_gemm(x, values, self.bitmask, self.bias, self.in_features)
        # other N:M ratios and devices without a 2:4 kernel: the dense product
        w = self.to_dense().to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, w, bias)


class Sparse24QuantLinear(HugePageBuffers, nn.Module):
    """y = x @ W^T + b where W [out, in] is 2:4 sparse and its kept weights are 4-bit integers with a scale and zero
    point per group_size input columns (what the joint SparseGPT + GPTQ pass produces: 2:4 + int4).

    Buffers: `tiles` uint8, the codes and kept-column positions in the kernel layout (format.py: pack_int4_tiles),
    `scales` [out, groups] (fp16 by default), `zeros` uint8 [out, groups], `bias` [out] or None. A kept weight is
    (code - zero) * scale. The state dict (and the checkpoint) holds the plain layout instead of the tiles:
    `qvalues` uint8 [out, in / 4] (two codes a byte) and `bitmask` uint8 [out, ceil(in / 8)], also readable as
    properties. 0.40 bytes per dense weight at group 128 (codes 0.25, positions 0.125, fp16 scale and zero 0.023),
    against 1.13 for 2:4 with bf16 values and 0.52 for dense int4."""

    bits = fmt.INT4_BITS
    _hugepage_buffers = ("tiles",)  # kept on 2 MiB pages on the CPU (HugePageBuffers)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = 128,
                 scales_dtype: torch.dtype = torch.float16, device=None):
        super().__init__()
        fmt.check_in_features(in_features, 4)
        if out_features <= 0:
            raise ValueError(f"out_features must be positive, got {out_features}")
        if scales_dtype not in fmt.FLOAT_DTYPES:
            raise ValueError(f"scales dtype must be one of {fmt.FLOAT_DTYPES}, got {scales_dtype}")
        gs = fmt.check_int4_group_size(group_size, in_features)
        groups = -(-in_features // gs)
        self.in_features, self.out_features, self.n, self.m = in_features, out_features, 2, 4
        self.group_size = group_size
        first = (torch.arange(in_features, device=device) % 4 < 2).expand(out_features, in_features)
        self.register_buffer("tiles", fmt.pack_int4_tiles(
            torch.full((out_features, in_features // 4), 0x88, dtype=torch.uint8, device=device),
            fmt.pack_bitmask(first), in_features))
        self.register_buffer("scales", torch.zeros(out_features, groups, dtype=scales_dtype, device=device))
        self.register_buffer("zeros", torch.full((out_features, groups), 8, dtype=torch.uint8, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self._hugepage_init()

    @classmethod
    def from_quantized(cls, codes: torch.Tensor, mask: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                       group_size: int, bias: torch.Tensor | None = None,
                       scales_dtype: torch.dtype = torch.float16) -> "Sparse24QuantLinear":
        """A layer from the integer codes of every weight [out, in] (0..15; the pruned ones are ignored), a 2:4 mask
        [out, in], scales and zero points [out, groups] (GPTQ's grid, groups of group_size input columns)."""
        if codes.dim() != 2 or tuple(mask.shape) != tuple(codes.shape):
            raise ValueError(f"codes must be 2-D [out, in] and mask of the same shape, got {tuple(codes.shape)} and "
                             f"{tuple(mask.shape)}")
        out_features, in_features = codes.shape
        layer = cls(in_features, out_features, bias is not None, group_size=group_size, scales_dtype=scales_dtype,
                    device=codes.device)
        mask = mask.to(torch.bool)
        if not fmt.is_nm(mask, 2, 4):
            raise ValueError("mask is not 2:4: every group of 4 consecutive inputs must keep exactly 2")
        kept = codes[mask].reshape(out_features, in_features // 2)
        layer.tiles = fmt.pack_int4_tiles(fmt.pack_int4(kept), fmt.pack_bitmask(mask), in_features)
        if tuple(scales.shape) != tuple(layer.scales.shape) or tuple(zeros.shape) != tuple(layer.zeros.shape):
            raise ValueError(f"scales and zeros must be [{out_features}, {layer.scales.shape[1]}] (group_size "
                             f"{group_size}), got {tuple(scales.shape)} and {tuple(zeros.shape)}")
        z = zeros.to(torch.int32)
        if bool(((z < 0) | (z > 15)).any()):
            raise ValueError("int4 zero points must lie in 0..15")
        if not bool(torch.isfinite(scales).all()):
            raise ValueError("scales hold NaN or inf values")
        layer.scales.copy_(scales.to(scales_dtype))
        layer.zeros.copy_(z.to(torch.uint8))
        if bias is not None:
            if tuple(bias.shape) != (out_features,):
                raise ValueError(f"bias must have shape [{out_features}], got {tuple(bias.shape)}")
            layer.bias = bias.detach().clone().to(bias.dtype if bias.is_floating_point() else torch.float32)
        return layer

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
                   group_size: int = 128, sym: bool = True,
                   scales_dtype: torch.dtype = torch.float16) -> "Sparse24QuantLinear":
        """Round-to-nearest 2:4 + int4 of a dense weight (mask: by magnitude when None); each group's grid is set from
        its kept weights (GPTQ's min-max grid). For calibrated weights use the joint pass (sparsify with quantize=)."""
        from ..gptq.algorithm import quantization_grid, quantize_to_grid
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError("weight must be a 2-D floating-point tensor [out_features, in_features]")
        w = weight.detach().to(torch.float32)
        if mask is None:
            mask = fmt.nm_mask(w.abs(), 2, 4)
        mask = mask.to(torch.bool)
        out_f, in_f = w.shape
        gs = fmt.check_int4_group_size(group_size, in_f)
        kept = w * mask
        codes = torch.zeros(out_f, in_f, dtype=torch.int32, device=w.device)
        scales, zeros = [], []
        for g0 in range(0, in_f, gs):
            s, z = quantization_grid(kept[:, g0:g0 + gs].t(), cls.bits, sym)
            codes[:, g0:g0 + gs] = quantize_to_grid(w[:, g0:g0 + gs].t(), s, z, 15).t().to(torch.int32)
            scales.append(s)
            zeros.append(z)
        return cls.from_quantized(codes, mask, torch.stack(scales, 1), torch.stack(zeros, 1), group_size, bias,
                                  scales_dtype=scales_dtype)

    def plain(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(qvalues, bitmask): the codes and kept columns in the plain layout, unpacked from the tiles."""
        return fmt.unpack_int4_tiles(self.tiles, self.out_features, self.in_features)

    @property
    def qvalues(self) -> torch.Tensor:
        """The 4-bit codes of the kept values in the plain layout, uint8 [out, in / 4]."""
        return self.plain()[0]

    @property
    def bitmask(self) -> torch.Tensor:
        """The kept columns, uint8 [out, ceil(in / 8)] (the sparse-24-bitmask layout)."""
        return self.plain()[1]

    def set_plain(self, qvalues: torch.Tensor, bitmask: torch.Tensor):
        """Replaces the codes and mask from the plain layout (checked: 2:4, shapes)."""
        self.tiles = fmt.pack_int4_tiles(qvalues, bitmask, self.in_features)

    @property
    def mask(self) -> torch.Tensor:
        return fmt.unpack_bitmask(self.bitmask, self.in_features)

    def dequantized_values(self) -> torch.Tensor:
        """The kept weights [out, in / 2] in fp32."""
        return fmt.dequantize_int4_values(self.qvalues, self.scales, self.zeros, self.in_features, self.group_size)

    def to_dense(self) -> torch.Tensor:
        """The weight [out, in] with its zeros, fp32."""
        qvalues, bitmask = self.plain()
        values = fmt.dequantize_int4_values(qvalues, self.scales, self.zeros, self.in_features, self.group_size)
        return fmt.decompress(values, bitmask, (self.out_features, self.in_features))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, 2:4 + int4, "
                f"group_size={self.group_size}, scales={self.scales.dtype}, bias={self.bias is not None}")

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        qvalues, bitmask = self.plain()
        destination[prefix + "qvalues"], destination[prefix + "bitmask"] = qvalues, bitmask
        for name in ("scales", "zeros", "bias"):
            t = getattr(self, name)
            if t is not None:
                destination[prefix + name] = t if keep_vars else t.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # the plain layout becomes the tiles (load_state_dict hands each module its own copy of the dict)
        plain = [state_dict.get(prefix + k) for k in ("qvalues", "bitmask")]
        if all(isinstance(t, torch.Tensor) for t in plain):
            del state_dict[prefix + "qvalues"], state_dict[prefix + "bitmask"]
            try:
                state_dict[prefix + "tiles"] = fmt.pack_int4_tiles(plain[0], plain[1], self.in_features)
            except ValueError as e:
                error_msgs.append(f"{prefix}: {e}")
                return
        elif any(isinstance(t, torch.Tensor) for t in plain):
            missing_keys.extend(prefix + k for k, t in zip(("qvalues", "bitmask"), plain) if t is None)
            return
        # scales and bias take the checkpoint's float dtype
        for leaf in ("scales", "bias"):
            t, mine = state_dict.get(prefix + leaf), getattr(self, leaf)
            if (isinstance(t, torch.Tensor) and mine is not None and t.dtype in fmt.FLOAT_DTYPES
                    and t.dtype != mine.dtype):
                setattr(self, leaf, torch.empty_like(mine, dtype=t.dtype))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        try:  # the codes and mask were checked when packed into tiles
            fmt.check_int4_groups(self.scales, self.zeros, (self.out_features, self.in_features), self.group_size)
        except ValueError as e:
            error_msgs.append(f"{prefix}: {e}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must end in in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.device.type in ("cpu", "cuda") and x.dtype in fmt.FLOAT_DTYPES:
            return ops.sparse24_int4_gemm(x, self.tiles, self.scales, self.zeros, self.bias, self.in_features,
                                          self.group_size)
        w = self.to_dense().to(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
