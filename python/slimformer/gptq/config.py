"""GPTQConfig: how a model is quantized and how its checkpoint describes itself.

Field names follow transformers' GPTQConfig where the two overlap (bits, group_size, desc_act, sym, damp_percent,
true_sequential, static_groups, checkpoint_format, modules_to_not_convert, block_name_to_quantize,
model_seqlen), so a config.json written by us reads as an ordinary GPTQ checkpoint elsewhere."""
from __future__ import annotations

from dataclasses import InitVar, dataclass, field, fields
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
    # "gptq" (v1: zero - 1) or "gptq_v2" (the zero itself); None: v1 when sym, gptq_v2 when not (GPTQModel refuses
    # asymmetric v1 files it did not write, and transformers reads v1 as symmetric only)
    checkpoint_format: str | None = None
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
    # aliases: the names slimformer.quantize_weight and the GPTQ paper's code use for desc_act and damp_percent
    act_order: InitVar[bool | None] = None
    damp: InitVar[float | None] = None

    def __post_init__(self, act_order=None, damp=None):
        if act_order is not None:
            self.desc_act = act_order
        if damp is not None:
            self.damp_percent = damp
        for name in ("bits", "group_size", "block_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"GPTQConfig.{name} must be an int, got {value!r} ({type(value).__name__})")
        for name in ("desc_act", "sym", "true_sequential", "static_groups", "lm_head", "mse", "asym_calibration"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"GPTQConfig.{name} must be a bool, got {getattr(self, name)!r}")
        gptq_format(self.bits)  # raises a clear error for unsupported widths
        if not (self.group_size == -1 or self.group_size > 0):
            raise ValueError(f"group_size must be a positive int or -1 (per-channel), got {self.group_size!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.checkpoint_format is not None and self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS} or None (v1 when sym, gptq_v2 "
                             f"when not), got {self.checkpoint_format!r}")
        if (not isinstance(self.damp_percent, (int, float)) or isinstance(self.damp_percent, bool)
                or not 0 < self.damp_percent < 1):
            raise ValueError(f"damp_percent must lie in (0, 1) (GPTQ adds damp_percent x the mean Hessian diagonal; "
                             f"GPTQModel refuses 0), got {self.damp_percent!r}")
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
        # GPTQModel reads a top-level "method" as its quantization family ("gptq"; "rtn" is not one): the calibration
        # method slimformer used goes into meta
        d["method"] = "gptq"
        d["meta"] = {"quantizer": [f"slimformer:{__version__}"], "calibration_method": self.method}
        return d

    @classmethod
    def from_dict(cls, d: dict, return_unused_kwargs: bool = False, **kwargs) -> "GPTQConfig":
        """From a checkpoint's quantization_config (ours, AutoGPTQ's, GPTQModel's or transformers'); unknown keys
        are ignored."""
        method = d.get("quant_method", "gptq")
        if str(method).lower() not in ("gptq", "slimformer"):
            raise ValueError(f"quantization_config has quant_method={method!r}; slimformer loads 'gptq' checkpoints")
        names = {f.name for f in fields(cls) if f.init and f.name not in NOT_SAVED}
        params = {k: v for k, v in d.items() if k in names and k != "method"}
        dynamic = d.get("dynamic")
        if isinstance(dynamic, dict) and any(not str(k).startswith("-:") for k in dynamic):
            raise ValueError("quantization_config.dynamic has per-module overrides ("
                             f"{[k for k in dynamic if not str(k).startswith('-:')][:4]}); slimformer loads one bits/"
                             "group_size per checkpoint (skip rules '-:...' are fine)")
        if "damp_percent" in params and not (isinstance(params["damp_percent"], (int, float))
                                             and 0 < params["damp_percent"] < 1):
            del params["damp_percent"]  # a calibration setting: an odd value on disk does not stop a load
        meta = d.get("meta") if isinstance(d.get("meta"), dict) else {}
        method = meta.get("calibration_method", d.get("method"))
        if method in METHODS:  # GPTQModel's "method" is its family ("gptq"); ours lives in meta
            params["method"] = method
        if "checkpoint_format" not in d:
            # GPTQModel also writes "format" (older versions: meta.checkpoint_format); a checkpoint naming none is v1
            fmt = d.get("format") or meta.get("checkpoint_format") or "gptq"
            if fmt not in CHECKPOINT_FORMATS:
                raise ValueError(f"quantization_config has format={fmt!r}; slimformer reads the GPTQ layouts "
                                 f"{CHECKPOINT_FORMATS}")
            params["checkpoint_format"] = fmt
        params.update({k: kwargs.pop(k) for k in list(kwargs) if k in names})
        config = cls(**params)
        return (config, kwargs) if return_unused_kwargs else config
