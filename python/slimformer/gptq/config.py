"""GPTQConfig: how a model is quantized and how its checkpoint describes itself.

Field names follow transformers' GPTQConfig where the two overlap (bits, group_size, desc_act, sym, damp_percent,
true_sequential, static_groups, checkpoint_format, modules_to_not_convert, block_name_to_quantize,
model_seqlen), so a config.json written by us reads as an ordinary GPTQ checkpoint elsewhere."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ..formats import gptq_format
from .algorithm import ASYM_METHODS
from .format import CHECKPOINT_FORMATS

METHODS = ("gptq", "rtn")
NOT_SAVED = ("dataset", "tokenizer", "quant_method")

try:  # with transformers, GPTQConfig is also a transformers quantization config (see slimformer.hf.integration)
    from transformers.utils.quantization_config import QuantizationConfigMixin as _Base
except ImportError:  # pragma: no cover - transformers is a dependency of every HF feature, not of the kernels
    _Base = object


@dataclass
class GPTQConfig(_Base):
    bits: int = 4
    group_size: int = 128
    desc_act: bool = False  # act-order: quantize columns by descending Hessian diagonal
    sym: bool = True
    damp_percent: float = 0.01
    true_sequential: bool = True  # inside a block, quantize layer groups in execution order
    static_groups: bool = False  # with desc_act: groups fixed before quantizing (monotonic g_idx)
    method: str = "gptq"  # "gptq" or "rtn" (round-to-nearest, no calibration needed)
    modules_to_not_convert: list[str] | None = None  # fnmatch patterns of module names kept dense
    block_name_to_quantize: str | None = None  # e.g. "model.layers"; found automatically when None
    lm_head: bool = False  # also quantize the output projection
    mse: bool = False  # MSE shrink search for each group's grid
    block_size: int = 128  # GPTQ lazy-update block (columns)
    model_seqlen: int | None = None  # calibration texts are truncated to this many tokens (else the model's limit)
    checkpoint_format: str = "gptq"  # "gptq" (v1 zero points) or "gptq_v2"
    # GPTQv2 asymmetric calibration: match each layer to the full-precision model's output, not to its own
    # output on the (already partly quantized) model's inputs; costs a second forward pass per layer group
    asym_calibration: bool = False
    asym_alpha: float = 0.25  # weight of the asymmetry correction (0.25 as published)
    asym_method: str = "gptqv2"  # "gptqv2" (the published update) or "lstsq" (GPTQ toward the least-squares target)
    # calibration for AutoModel*.from_pretrained(..., quantization_config=GPTQConfig(dataset=[...], tokenizer=tok))
    dataset: Any = field(default=None, repr=False)
    tokenizer: Any = field(default=None, repr=False)
    # routes transformers' from_pretrained to our quantizer; checkpoints say "gptq" (see to_dict)
    quant_method: str = field(default="slimformer", init=False)

    def __post_init__(self):
        gptq_format(self.bits)  # raises a clear error for unsupported widths
        if not (self.group_size == -1 or (isinstance(self.group_size, int) and self.group_size > 0)):
            raise ValueError(f"group_size must be a positive int or -1 (per-channel), got {self.group_size!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {self.checkpoint_format!r}")
        if not 0 <= self.damp_percent < 1:
            raise ValueError(f"damp_percent must lie in [0, 1), got {self.damp_percent}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.asym_method not in ASYM_METHODS:
            raise ValueError(f"asym_method must be one of {ASYM_METHODS}, got {self.asym_method!r}")
        if not 0 <= self.asym_alpha < float("inf"):
            raise ValueError(f"asym_alpha must be a finite number >= 0, got {self.asym_alpha}")
        if self.asym_calibration and self.method != "gptq":
            raise ValueError("asym_calibration needs method='gptq' (it changes how GPTQ uses calibration data)")
        if self.model_seqlen is not None and self.model_seqlen <= 0:
            raise ValueError(f"model_seqlen must be positive, got {self.model_seqlen}")
        if isinstance(self.modules_to_not_convert, str):
            self.modules_to_not_convert = [self.modules_to_not_convert]

    def to_dict(self) -> dict:
        """The quantization_config block of config.json (GPTQ keys other loaders read, plus ours)."""
        from .. import __version__
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_SAVED}
        if d["modules_to_not_convert"] is not None:
            d["modules_to_not_convert"] = list(d["modules_to_not_convert"])
        d["quant_method"] = "gptq"
        d["meta"] = {"quantizer": [f"slimformer:{__version__}"]}
        return d

    @classmethod
    def from_dict(cls, d: dict, return_unused_kwargs: bool = False, **kwargs) -> "GPTQConfig":
        """From a checkpoint's quantization_config (ours, AutoGPTQ's, GPTQModel's or transformers'); unknown keys
        are ignored."""
        method = d.get("quant_method", "gptq")
        if str(method).lower() not in ("gptq", "slimformer"):
            raise ValueError(f"quantization_config has quant_method={method!r}; slimformer loads 'gptq' checkpoints")
        names = {f.name for f in fields(cls) if f.init and f.name not in NOT_SAVED}
        params = {k: v for k, v in d.items() if k in names}
        params.update({k: kwargs.pop(k) for k in list(kwargs) if k in names})
        if "checkpoint_format" not in d and isinstance(d.get("meta"), dict):
            # GPTQModel records the format there; default is v1 ("gptq")
            fmt = d["meta"].get("checkpoint_format")
            if fmt:
                params["checkpoint_format"] = fmt
        config = cls(**params)
        return (config, kwargs) if return_unused_kwargs else config
