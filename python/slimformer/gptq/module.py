"""QuantLinear: drop-in replacement for nn.Linear with GPTQ int2/3/4/8 weights.

Storage: the packed weight lives once, in the kernel layout (qtiles / scale_zero / perm, shared by the CPU and
CUDA kernels, so .to(device) moves it without repacking). The small Hub tensors (scales, qzeros, g_idx, bias)
are kept as they are, and state_dict() rebuilds qweight on the fly, so what is saved is the Hub GPTQ layout
and load_state_dict() accepts any Hub GPTQ layer."""
from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..hugepages import HugePageBuffers
from ..hf.swap import is_linear_like, linear_weight
from ..formats import gptq_format
from . import format as fmt
from .algorithm import GPTQResult, gptq, round_to_nearest


class QuantLinear(HugePageBuffers, nn.Module):
    """y = x @ W^T + b with W stored as GPTQ integers (bits in {2, 3, 4, 8}) and fp16 group scales.

    Build one with `from_linear` (round-to-nearest) or `from_gptq` (Hub tensors), or construct an empty layer
    and `load_state_dict` a Hub checkpoint into it."""

    # the kernel layout, set by _repack (never loaded in place), kept on 2 MiB pages on the CPU (HugePageBuffers)
    _hugepage_buffers = ("qtiles",)

    def __init__(self, in_features: int, out_features: int, bits: int = 4, group_size: int = 128, bias: bool = True,
                 *, sym: bool = True, checkpoint_format: str = "gptq", device=None):
        super().__init__()
        self.format = gptq_format(bits)
        if checkpoint_format not in fmt.CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {fmt.CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features}, {out_features}")
        uv = self.format.values_per_unit
        if in_features % uv:
            raise ValueError(f"{bits}-bit GPTQ packs {uv} input rows per unit: in_features must be a multiple of "
                             f"{uv}, got {in_features}")
        col_unit = 32 // bits if bits != 3 else 32
        if out_features % col_unit:
            raise ValueError(f"{bits}-bit qzeros pack {col_unit} output columns per unit: out_features must be a "
                             f"multiple of {col_unit}, got {out_features}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size  # as the checkpoint states it (-1 = per-channel)
        self.kernel_group_size = fmt.resolve_group_size(group_size, in_features)
        if self.kernel_group_size < in_features and self.kernel_group_size % uv:
            raise ValueError(f"{bits}-bit group_size must be a multiple of {uv} or -1, got {group_size}")
        self.sym = sym
        self.checkpoint_format = checkpoint_format
        K, N = in_features, out_features
        G = -(-K // self.kernel_group_size)
        n_tiles = -(-N // fmt.TILE_COLS)
        self.register_buffer("qtiles", torch.zeros(n_tiles, K * bits // 32, fmt.TILE_COLS, dtype=torch.int32,
                                                   device=device), persistent=False)
        self.register_buffer("scale_zero", torch.zeros(n_tiles, G, 2, fmt.TILE_COLS, dtype=torch.float16,
                                                       device=device), persistent=False)
        self.register_buffer("perm", None, persistent=False)
        self.register_buffer("qzeros", torch.zeros(G, N * bits // 32, dtype=torch.int32, device=device))
        self.register_buffer("scales", torch.zeros(G, N, dtype=torch.float16, device=device))
        self.register_buffer("g_idx", fmt.default_g_idx(K, self.kernel_group_size, device))
        self.register_buffer("bias", torch.zeros(N, dtype=torch.float16, device=device) if bias else None)
        self._act_int8 = False

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_linear(cls, linear: nn.Module, bits: int = 4, group_size: int = 128, sym: bool = True,
                    checkpoint_format: str = "gptq") -> "QuantLinear":
        """Round-to-nearest quantization of an nn.Linear (weight [out, in]) or a transformers Conv1D."""
        if not is_linear_like(linear):
            raise TypeError(f"from_linear expects an nn.Linear or transformers Conv1D, got {type(linear).__name__}")
        weight = linear_weight(linear)
        if weight.numel() and not bool(torch.isfinite(weight).all()):
            raise ValueError(f"from_linear: the {type(linear).__name__}'s weight holds NaN or inf values "
                             f"({int((~torch.isfinite(weight)).sum())} of {weight.numel()}); it cannot be quantized")
        q, scales, zeros = round_to_nearest(weight, bits, group_size, sym)
        bias = getattr(linear, "bias", None)
        return cls.from_int(q, scales, zeros, None, bias, bits=bits, group_size=group_size, sym=sym,
                            checkpoint_format=checkpoint_format)

    @classmethod
    def from_int(cls, q, scales, zeros, g_idx=None, bias=None, *, bits: int, group_size: int, sym: bool = True,
                 checkpoint_format: str = "gptq") -> "QuantLinear":
        """From unpacked integers q [in, out], fp16 scales [G, out], true zero points [G, out] and g_idx [in].

        A v1 ("gptq") checkpoint cannot store a zero point of 0 (it stores zero - 1); such a layer is kept as
        "gptq_v2"."""
        gptq_format(bits)
        if q.dim() != 2:
            raise ValueError(f"q must be 2-D [in_features, out_features], got shape {tuple(q.shape)}")
        K, N = q.shape
        if checkpoint_format == "gptq" and zeros.numel() and int(zeros.min()) < 1:
            checkpoint_format = "gptq_v2"
        layer = cls(K, N, bits, group_size, bias=bias is not None, sym=sym, checkpoint_format=checkpoint_format,
                    device=q.device)
        bias = bias.detach().to(torch.float16) if bias is not None else None
        layer._set_hub(fmt.pack_rows(q, bits), fmt.qzeros_from_zeros(zeros, bits, checkpoint_format), scales,
                       g_idx, bias)
        return layer

    @classmethod
    def from_gptq(cls, qweight, qzeros, scales, g_idx=None, bias=None, *, bits: int, group_size: int,
                  checkpoint_format: str = "gptq", sym: bool = True) -> "QuantLinear":
        """From Hub-layout tensors ("gptq" v1 or "gptq_v2" zero points); g_idx may be act-order."""
        gptq_format(bits)
        if not isinstance(qweight, torch.Tensor) or qweight.dim() != 2:
            raise ValueError("qweight must be a 2-D int32 tensor [in_features * bits / 32, out_features]")
        uv, uw = gptq_format(bits).values_per_unit, gptq_format(bits).words_per_unit
        if qweight.shape[0] % uw:
            raise ValueError(f"qweight has {qweight.shape[0]} rows, not a whole number of {bits}-bit units of {uw}")
        K, N = qweight.shape[0] // uw * uv, qweight.shape[1]
        layer = cls(K, N, bits, group_size, bias=bias is not None, sym=sym, checkpoint_format=checkpoint_format,
                    device=qweight.device)
        layer._set_hub(qweight, qzeros, scales, g_idx, bias)
        return layer

    def _set_hub(self, qweight, qzeros, scales, g_idx, bias):
        fmt.check_hub_tensors(qweight, qzeros, scales, g_idx, bias, bits=self.bits,
                              group_size=self.kernel_group_size, in_features=self.in_features,
                              out_features=self.out_features)
        if (bias is None) != (self.bias is None):
            raise ValueError(f"layer was built with bias={self.bias is not None} but got bias={bias is not None}")
        dev = self.qzeros.device
        self.qzeros = qzeros.to(dev, torch.int32).contiguous()
        self.scales = scales.to(dev, torch.float16).contiguous()
        if g_idx is not None:
            self.g_idx = g_idx.to(dev, torch.int32).contiguous()
        if bias is not None:
            self.bias = bias.to(dev).contiguous()
        self._repack(qweight.to(dev, torch.int32))

    def _repack(self, qweight: torch.Tensor):
        qtiles, scale_zero, perm = fmt.to_kernel_layout(
            qweight, self.qzeros, self.scales, self.g_idx, bits=self.bits, group_size=self.kernel_group_size,
            in_features=self.in_features, out_features=self.out_features, checkpoint_format=self.checkpoint_format)
        dev = self.qzeros.device
        self.qtiles, self.scale_zero = qtiles.to(dev), scale_zero.to(dev)
        self.perm = perm.to(dev) if perm is not None else None

    # ------------------------------------------------------------------------------------------------ devices
    def _apply(self, fn, recurse=True):
        """Device moves apply to every tensor; dtype casts do not. `model.half()`, `model.to(torch.bfloat16)` and
        the like would otherwise cast the fp16 scales (and the kernel layout's fp16 scale/zero pairs) to another
        float type, which the kernels reject and a checkpoint must not hold; the layer takes activations of any
        supported dtype as they are."""
        if self._parameters:  # QuantLinear registers none; a subclass that adds some must handle them here
            raise RuntimeError("QuantLinear holds no parameters")
        if recurse:
            for module in self.children():
                module._apply(fn)
        for name, buf in self._buffers.items():
            if buf is not None:
                moved = fn(buf)
                self._buffers[name] = moved if moved.dtype == buf.dtype else buf.to(device=moved.device)
        return self

    # ------------------------------------------------------------------------------------------------ compute
    ACTIVATION_MODES = ("exact", "int8")

    @property
    def activation_mode(self) -> str:
        """"exact" (default): every product of a weight with an fp32 or bf16 activation is exact, sums in fp32.
        "int8" (opt-in, 4-bit weights, CPU): activations are rounded to int8 per row and block of up to 128
        values before an integer product, 1.7-2.2x faster from 4 rows up (measured) at a measured accuracy cost
        (benchmarks/README.md). Not saved in the state_dict."""
        return "int8" if self._act_int8 else "exact"

    def supports_activation_mode(self, mode: str) -> bool:
        """Whether this layer can run in `mode` ("int8" needs 4-bit weights)."""
        return mode == "exact" or (mode == "int8" and self.bits == 4)

    @activation_mode.setter
    def activation_mode(self, mode: str):
        if mode not in self.ACTIVATION_MODES:
            raise ValueError(f"activation_mode must be one of {self.ACTIVATION_MODES}, got {mode!r}")
        if not self.supports_activation_mode(mode):
            raise ValueError(f"the int8 activation mode needs 4-bit weights, this layer has bits={self.bits}")
        if mode == "int8" and self.qtiles.device.type != "cpu":
            raise ValueError(f"the int8 activation mode runs on the CPU only; this layer is on {self.qtiles.device}")
        self._act_int8 = mode == "int8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self._buffers  # one dict instead of four nn.Module.__getattr__ lookups (a decode step makes many calls)
        if self._act_int8:
            if x.device.type != "cpu":
                raise NotImplementedError(f"the int8 activation mode runs on the CPU only, got x on {x.device}; "
                                          "set activation_mode='exact' for this device")
            return ops.gptq_gemm_a8(x, b["qtiles"], b["scale_zero"], b["perm"], b["bias"], self.bits,
                                    self.kernel_group_size, self.in_features, self.out_features)
        return ops.gptq_gemm(x, b["qtiles"], b["scale_zero"], b["perm"], b["bias"], self.bits,
                             self.kernel_group_size, self.in_features, self.out_features)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out_features, in_features] this layer computes with."""
        w = ops.gptq_dequantize(self.qtiles, self.scale_zero, self.bits, self.kernel_group_size, self.in_features,
                                self.out_features)
        if self.perm is not None:
            restored = torch.empty_like(w)
            restored[self.perm] = w
            w = restored
        return w.t()

    @property
    def qweight(self) -> torch.Tensor:
        """Hub-layout qweight int32 [in_features * bits / 32, out_features], rebuilt from the kernel layout."""
        return fmt.qweight_from_kernel_layout(self.qtiles, self.perm, bits=self.bits, in_features=self.in_features,
                                              out_features=self.out_features)

    # ------------------------------------------------------------------------------------------- state dict
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "qweight"] = self.qweight

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "qweight"
        qweight = state_dict.get(key)
        own = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(own, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if qweight is None:
            missing_keys.append(key)
            return
        if prefix + "g_idx" not in state_dict:  # older checkpoints omit g_idx for non-act-order layers
            self.g_idx = fmt.default_g_idx(self.in_features, self.kernel_group_size, self.qzeros.device)
            if prefix + "g_idx" in missing_keys:
                missing_keys.remove(prefix + "g_idx")
        try:
            fmt.check_hub_tensors(qweight, self.qzeros, self.scales, self.g_idx, None, bits=self.bits,
                                  group_size=self.kernel_group_size, in_features=self.in_features,
                                  out_features=self.out_features)
            self._repack(qweight.to(self.qzeros.device, torch.int32))
        except (ValueError, TypeError) as e:
            error_msgs.append(f"{key}: {e}")

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size == -1 else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {gs}, "
                f"sym={self.sym}, act_order={self.perm is not None}, bias={self.bias is not None}, "
                f"checkpoint_format={self.checkpoint_format!r}"
                + (", activation_mode='int8'" if self._act_int8 else ""))


def set_activation_mode(model: nn.Module, mode: str) -> int:
    """Sets activation_mode ("exact" or "int8") on every QuantLinear in model whose bits allow it (int8: 4-bit
    layers; others keep "exact"). Returns the number of layers now in `mode`."""
    if mode not in QuantLinear.ACTIVATION_MODES:
        raise ValueError(f"mode must be one of {QuantLinear.ACTIVATION_MODES}, got {mode!r}")
    n = 0
    for m in model.modules():
        if isinstance(m, QuantLinear) and m.supports_activation_mode(mode):
            m.activation_mode = mode
            n += 1
    return n


def quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, *, bits: int = 4, group_size: int = 128,
                    sym: bool = True, desc_act: bool = False, static_groups: bool = False, damp_percent: float = 0.01,
                    block_size: int = 128, mse: bool = False, asym_cross: torch.Tensor | None = None,
                    asym_alpha: float = 0.25, asym_method: str = "gptqv2", checkpoint_format: str = "gptq",
                    return_result: bool = False, act_order: bool | None = None, damp: float | None = None):
    """GPTQ-quantizes weight [out, in] (nn.Linear layout) against the layer's Hessian [in, in] (2/n X^T X of its
    calibration inputs, see HessianAccumulator) into a QuantLinear without bias.

    The knobs carry GPTQConfig's names (desc_act = act-order, damp_percent); act_order= and damp= are accepted as
    aliases. asym_cross / asym_alpha / asym_method: GPTQv2's asymmetric calibration (see slimformer.gptq.gptq).
    return_result=True returns (layer, GPTQResult), whose .error is the relative reconstruction error."""
    if act_order is not None:
        desc_act = act_order
    if damp is not None:
        damp_percent = damp
    result: GPTQResult = gptq(weight, hessian, bits=bits, group_size=group_size, sym=sym, act_order=desc_act,
                              static_groups=static_groups, damp=damp_percent, block_size=block_size, mse=mse,
                              asym_cross=asym_cross, asym_alpha=asym_alpha, asym_method=asym_method)
    layer = QuantLinear.from_int(result.q, result.scales, result.zeros, result.g_idx, None, bits=bits,
                                 group_size=group_size, sym=sym, checkpoint_format=checkpoint_format)
    return (layer, result) if return_result else layer
