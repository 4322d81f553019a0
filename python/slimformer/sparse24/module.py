"""Sparse24Linear: drop-in replacement for nn.Linear with an N:M sparse weight (2:4 by default) stored compressed."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt


class Sparse24Linear(nn.Module):
    """y = x @ W^T + b where W [out, in] keeps n of every m consecutive inputs (2:4 unless told otherwise).

    Buffers (the compressed-tensors sparse-24-bitmask layout, format.py): `values` [out, in * n / m] in fp32, bf16 or
    fp16, `bitmask` uint8 [out, ceil(in / 8)], `bias` [out] or None. Build one with `from_linear` (magnitude),
    `from_dense` (a weight and its mask), `slimformer.sparse24.prune_weight` (SparseGPT, Wanda), or construct an empty
    layer and load_state_dict into it."""

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
