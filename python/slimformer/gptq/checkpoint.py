"""GPTQ's row of the checkpoint registry (slimformer.hf.checkpoint): the Hub GPTQ layout.

On disk (what AutoGPTQ, GPTQModel, transformers+gptqmodel, vLLM and TGI read): config.json's quantization_config
{quant_method: "gptq", bits, group_size, desc_act, sym, checkpoint_format, lm_head, dynamic, meta, ...}; for each
quantized linear `<name>`: <name>.qweight / .qzeros / .scales / .g_idx (/ .bias); quantize_config.json with the
same settings for older AutoGPTQ loaders (and read from older checkpoints that only have that file).

Zero points: v1 ("gptq") stores zero - 1, v2 ("gptq_v2") the zero itself. A symmetric model is saved as v1 (what
every loader reads); an asymmetric one as v2 unless v1 is asked for, because GPTQModel refuses asymmetric v1 files
it did not write and transformers documents v1 as symmetric-only. Reading v1 follows its writer: GPTQModel forms
zero - 1 with whole-word int32 arithmetic (a zero of 0 borrows from the next field at 2/4/8 bits; 3 bits wrap per
field) and its checkpoints are read with the matching carry; AutoGPTQ's (and ours) are read field by field."""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..hf.calibrate import find_blocks, head_name
from ..hf.checkpoint import CheckpointError, CheckpointMethod, register_checkpoint_method
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt
from .config import GPTQConfig
from .module import QuantLinear

LEGACY_CONFIG = "quantize_config.json"
LEAVES = ("qweight", "qzeros", "scales", "g_idx", "bias")


def _dynamic_skip_rules(model: nn.Module, layers: dict, block_name) -> dict:
    """GPTQModel / vLLM `dynamic` rules ("-:" = not quantized) for the linears inside the blocks that stay dense."""
    try:
        path, blocks = find_blocks(model, block_name)
    except ValueError:
        return {}
    quantized = set(layers)
    dense = [f"{path}.{n}" for n, m in blocks.named_modules() if n and is_linear_like(m)
             and f"{path}.{n}" not in quantized]
    return {f"-:^{re.escape(n)}$": {} for n in dense}


def config_block(model: nn.Module, layers: dict[str, QuantLinear]) -> dict:
    """The quantization_config to write: the one quantize() left on the model, checked against the layers, with the
    fields that depend on the layers (lm_head, desc_act, checkpoint_format, dynamic) derived from them."""
    first = next(iter(layers.values()))
    for name, layer in layers.items():
        for attr in ("bits", "group_size", "sym"):
            if getattr(layer, attr) != getattr(first, attr):
                raise CheckpointError(
                    f"a GPTQ checkpoint has one {attr} for all layers, but {name} has {attr}={getattr(layer, attr)} "
                    f"and others {getattr(first, attr)}")
    existing = getattr(getattr(model, "config", None), "quantization_config", None)
    if isinstance(existing, GPTQConfig):
        existing = existing.to_dict()
    if isinstance(existing, dict) and isinstance(existing.get("methods"), dict):  # a mixed-method checkpoint's
        existing = (existing["methods"].get("gptq") or {}).get("config")
    if isinstance(existing, dict) and str(existing.get("quant_method", "")).lower() in ("gptq", "slimformer"):
        cfg = GPTQConfig.from_dict(existing)
    else:
        cfg = GPTQConfig(bits=first.bits, group_size=first.group_size, sym=first.sym)
    if (cfg.bits, cfg.group_size, cfg.sym) != (first.bits, first.group_size, first.sym):
        raise CheckpointError(f"model.config.quantization_config says bits={cfg.bits}, group_size={cfg.group_size}, "
                              f"sym={cfg.sym} but the layers have {first.bits}, {first.group_size}, {first.sym}")
    cfg.desc_act = any(layer.perm is not None for layer in layers.values()) or (cfg.desc_act and cfg.static_groups)
    cfg.lm_head = head_name(model) in layers
    if cfg.checkpoint_format is None:  # auto: v1 is what every loader reads, but only for symmetric models
        cfg.checkpoint_format = "gptq" if cfg.sym else "gptq_v2"
    elif cfg.checkpoint_format == "gptq" and any(layer.checkpoint_format == "gptq_v2" for layer in layers.values()):
        # v1 cannot store a zero point of 0 field by field; one such layer makes the whole checkpoint v2
        warnings.warn("some asymmetric layers have a zero point of 0, which GPTQ v1 cannot store: saving the "
                      "checkpoint as checkpoint_format='gptq_v2'", RuntimeWarning, stacklevel=4)
        cfg.checkpoint_format = "gptq_v2"
    elif cfg.checkpoint_format == "gptq" and not cfg.sym:
        warnings.warn("saving an asymmetric model as GPTQ v1 (checkpoint_format='gptq'), as its config says: "
                      "GPTQModel refuses to load asymmetric v1 files it did not write, and transformers reads v1 as "
                      "symmetric only; checkpoint_format='gptq_v2' (the default for sym=False) avoids both",
                      RuntimeWarning, stacklevel=4)
    out = cfg.to_dict()
    dynamic = _dynamic_skip_rules(model, layers, cfg.block_name_to_quantize)
    if dynamic:
        out["dynamic"] = dynamic
    return out


def _state(name: str, layer: QuantLinear, block: dict) -> dict:
    state = dict(layer.state_dict())
    target = block["checkpoint_format"]
    if layer.checkpoint_format != target:
        zeros = fmt.zeros_from_qzeros(layer.qzeros, layer.bits, layer.out_features, layer.checkpoint_format)
        state["qzeros"] = fmt.qzeros_from_zeros(zeros, layer.bits, target)
    return state


def _settings(block: dict) -> GPTQConfig:
    try:
        return GPTQConfig.from_dict(block)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"quantization_config: {e}") from None


def _build(name: str, dense: nn.Module, block: dict, present: set, dtype) -> QuantLinear:
    cfg = _settings(block)
    if not is_linear_like(dense):
        raise CheckpointError(f"{name} is a {type(dense).__name__} in the model, not a linear layer")
    if cfg.desc_act and not cfg.static_groups and "g_idx" not in present:
        raise CheckpointError(f"{name}: the checkpoint is act-order (desc_act=true) but this layer has no g_idx, so "
                              "its rows' groups are unknown")
    N, K = linear_weight(dense).shape
    return QuantLinear(K, N, cfg.bits, cfg.group_size, bias="bias" in present, sym=cfg.sym,
                       checkpoint_format=cfg.checkpoint_format or "gptq", device="cpu")


def written_by_gptqmodel(block: dict) -> bool:
    meta = block.get("meta")
    producers = meta.get("quantizer") if isinstance(meta, dict) else None
    if isinstance(producers, str):
        producers = [producers]
    return any(str(p).lower().startswith("gptqmodel") for p in producers or ())


def _check_leaf(name: str, leaf: str, t: torch.Tensor):
    if leaf in ("qweight", "qzeros") and t.dtype != torch.int32:
        raise CheckpointError(f"{name}.{leaf} must be int32 (packed words), got {t.dtype}")
    if leaf in ("scales", "bias") and not t.is_floating_point():
        raise CheckpointError(f"{name}.{leaf} must be a floating-point tensor, got {t.dtype}")
    if leaf == "g_idx":
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise CheckpointError(f"{name}.g_idx must be an integer tensor, got {t.dtype}")


def _to_fp16(name: str, leaf: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.float16:
        return t
    h = t.to(torch.float16)
    if t.numel() and not bool(torch.isfinite(h).all()) and bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{name}.{leaf} ({t.dtype}) holds values beyond the fp16 range the layer stores")
    if t.numel() and not torch.equal(h.to(t.dtype), t):
        rel = ((h.to(torch.float64) - t.to(torch.float64)).abs() / t.to(torch.float64).abs().clamp_min(1e-30)).max()
        warnings.warn(f"{name}.{leaf} is {t.dtype}; the layer stores fp16, which rounds it (max relative change "
                      f"{float(rel):.1e})", RuntimeWarning, stacklevel=5)
    return h


def _load(layer: QuantLinear, name: str, tensors: dict, block: dict):
    for leaf, t in tensors.items():
        _check_leaf(name, leaf, t)
    if "g_idx" in tensors:
        g = tensors["g_idx"].to(torch.int64)
        G = layer.scales.shape[0]
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= G):
            raise CheckpointError(f"{name}.g_idx values must lie in [0, {G}), got [{int(g.min())}, {int(g.max())}]")
        tensors["g_idx"] = g.to(torch.int32)
    tensors["scales"] = _to_fp16(name, "scales", tensors["scales"])
    if "bias" in tensors:
        tensors["bias"] = _to_fp16(name, "bias", tensors["bias"])
    if layer.checkpoint_format == "gptq" and written_by_gptqmodel(block):
        # GPTQModel's v1 zero - 1 borrowed across fields: read it back with the writer's carry, store it as v2
        if tuple(tensors["qzeros"].shape) != tuple(layer.qzeros.shape):
            raise CheckpointError(f"{name}.qzeros must have shape {list(layer.qzeros.shape)}, got "
                                  f"{list(tensors['qzeros'].shape)}")
        zeros = fmt.zeros_from_qzeros(tensors["qzeros"], layer.bits, layer.out_features, "gptq", carry=True)
        tensors["qzeros"] = fmt.qzeros_from_zeros(zeros, layer.bits, "gptq_v2")
        layer.checkpoint_format = "gptq_v2"
    try:
        layer.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: {e}") from None


def _write_legacy(directory: Path, block: dict):
    legacy = {k: block[k] for k in ("bits", "group_size", "desc_act", "sym", "static_groups", "true_sequential",
                                    "damp_percent", "checkpoint_format") if k in block}
    legacy.update(quant_method="gptq", model_file_base_name="model")
    (directory / LEGACY_CONFIG).write_text(json.dumps(legacy, indent=2) + "\n")


def _read_legacy(directory: Path) -> dict | None:
    f = directory / LEGACY_CONFIG
    if not f.is_file():
        return None
    try:
        block = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{f} is not valid JSON ({e})") from None
    if not isinstance(block, dict):
        raise CheckpointError(f"{f} must hold a JSON object")
    block.setdefault("quant_method", "gptq")
    return block


GPTQ_CHECKPOINT = register_checkpoint_method(CheckpointMethod(
    name="gptq", module_type=QuantLinear, leaves=LEAVES, required=("qweight", "qzeros", "scales"), marker="qweight",
    quant_methods=("gptq",), config_block=config_block, build=_build, load=_load, state=_state,
    write_extra=_write_legacy, read_legacy=_read_legacy), replace=True)
