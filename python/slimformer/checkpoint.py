"""GPTQ checkpoints in the Hugging Face Hub layout: save_pretrained / load_pretrained.

On disk (what AutoGPTQ, GPTQModel, transformers+gptqmodel, vLLM and TGI read): config.json with a
quantization_config block {quant_method: "gptq", bits, group_size, desc_act, sym, checkpoint_format, ...};
safetensors files holding, for each quantized linear `<name>`, <name>.qweight / .qzeros / .scales / .g_idx
(/ .bias), and every other tensor dense; past ~4 GB per file the tensors are sharded with a
model.safetensors.index.json. Older AutoGPTQ checkpoints keep the settings in quantize_config.json instead;
those load too, and we write that file as well.

Reading is safetensors only: a checkpoint that only has pickle files (.bin / .pt) is refused, never unpickled."""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .gptq import format as fmt
from .gptq.config import GPTQConfig
from .gptq.module import QuantLinear
from .hf.swap import is_linear_like, linear_weight

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
QUANT_FILES = ("qweight", "qzeros", "scales", "g_idx", "bias")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model its config describes."""


# ------------------------------------------------------------------------------------------------------ save
def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    s = str(size).strip().upper()
    for unit, mult in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3), ("B", 1)):
        if s.endswith(unit):
            return int(float(s[:-len(unit)]) * mult)
    return int(s)


def _quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _config_for(model: nn.Module, layers: dict[str, QuantLinear]) -> dict:
    """The quantization_config to write: the one quantize() left on the model, checked against the layers."""
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
    if isinstance(existing, dict) and str(existing.get("quant_method", "")).lower() == "gptq":
        cfg = GPTQConfig.from_dict(existing)
    else:
        cfg = GPTQConfig(bits=first.bits, group_size=first.group_size, sym=first.sym)
    if (cfg.bits, cfg.group_size, cfg.sym) != (first.bits, first.group_size, first.sym):
        raise CheckpointError(f"model.config.quantization_config says bits={cfg.bits}, group_size={cfg.group_size}, "
                              f"sym={cfg.sym} but the layers have {first.bits}, {first.group_size}, {first.sym}")
    cfg.desc_act = any(layer.perm is not None for layer in layers.values()) or (cfg.desc_act and cfg.static_groups)
    # v1 cannot store a zero point of 0; one such layer makes the whole checkpoint v2
    if any(layer.checkpoint_format == "gptq_v2" for layer in layers.values()):
        if cfg.checkpoint_format == "gptq":
            warnings.warn("some asymmetric layers have a zero point of 0, which GPTQ v1 cannot store: saving the "
                          "checkpoint as checkpoint_format='gptq_v2'", RuntimeWarning, stacklevel=3)
        cfg.checkpoint_format = "gptq_v2"
    return cfg.to_dict()


def _state_dict_for_save(model: nn.Module, layers: dict[str, QuantLinear], checkpoint_format: str) -> dict:
    state = model.state_dict()
    for name, layer in layers.items():
        if layer.checkpoint_format != checkpoint_format:
            zeros = fmt.zeros_from_qzeros(layer.qzeros, layer.bits, layer.out_features, layer.checkpoint_format)
            state[f"{name}.qzeros"] = fmt.qzeros_from_zeros(zeros, layer.bits, checkpoint_format)
    out, seen = {}, {}
    for key, t in state.items():
        if t is None:
            continue
        t = t.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and ident in seen:
            continue  # tied weight (lm_head = embed_tokens): stored once, re-tied at load
        seen[ident] = key
        out[key] = t.to("cpu").contiguous()
    return out


def save_pretrained(model: nn.Module, save_directory, *, max_shard_size="4GB", tokenizer=None) -> Path:
    """Writes a quantized model as a Hub GPTQ checkpoint: config.json (+ quantization_config), quantize_config.json,
    model.safetensors (or shards + index). Returns the directory."""
    from safetensors.torch import save_file

    layers = _quant_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no QuantLinear layers: quantize it first (slimformer.quantize)")
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    qcfg = _config_for(model, layers)
    state = _state_dict_for_save(model, layers, qcfg["checkpoint_format"])

    limit = _parse_size(max_shard_size)
    shards, current, size = [], {}, 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    shards.append(current)
    for old in list(save_directory.glob("model*.safetensors")) + [save_directory / INDEX_NAME]:
        if old.exists():
            old.unlink()
    meta = {"format": "pt", "quantizer": "slimformer"}
    if len(shards) == 1:
        save_file(shards[0], str(save_directory / WEIGHTS_NAME), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(save_directory / fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (save_directory / INDEX_NAME).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))

    config = getattr(model, "config", None)
    cfg_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    cfg_dict["quantization_config"] = qcfg
    if not cfg_dict.get("architectures"):
        cfg_dict["architectures"] = [type(model).__name__]
    (save_directory / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True, default=str) + "\n")
    legacy = {k: qcfg[k] for k in ("bits", "group_size", "desc_act", "sym", "static_groups", "true_sequential",
                                   "damp_percent", "checkpoint_format")}
    legacy.update(quant_method="gptq", model_file_base_name="model")
    (save_directory / "quantize_config.json").write_text(json.dumps(legacy, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(save_directory))
    return save_directory


# ------------------------------------------------------------------------------------------------------ load
def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        files = sorted({path / f for f in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} lists shards that do not exist: {missing}")
        return files
    files = sorted(path.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(f"{path} holds only pickle checkpoints ({', '.join(pickles)}); slimformer reads "
                              "safetensors only and never unpickles files. Convert them to safetensors first.")
    raise CheckpointError(f"no .safetensors weights found in {path}")


def _quantization_config(path: Path, config) -> GPTQConfig:
    qc = getattr(config, "quantization_config", None)
    if qc is None and (path / "quantize_config.json").exists():  # older AutoGPTQ checkpoints
        qc = json.loads((path / "quantize_config.json").read_text())
        qc.setdefault("quant_method", "gptq")
    if qc is None:
        raise CheckpointError(f"{path} has no quantization_config in config.json and no quantize_config.json: "
                              "not a GPTQ checkpoint")
    if not isinstance(qc, dict):
        qc = qc.to_dict()
    return GPTQConfig.from_dict(qc)


@contextlib.contextmanager
def _parameters_on_meta():
    """Creates module parameters on the meta device (no memory, no init) and buffers on the CPU as usual, so a
    model skeleton costs nothing and non-persistent buffers (rotary tables, position ids) stay real."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _model_class(config, model_class):
    if model_class is not None:
        return model_class
    import transformers
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_pretrained(path, *, dtype: torch.dtype = torch.float32, device="cpu", model_class=None) -> nn.Module:
    """Loads a GPTQ checkpoint (ours, or an AutoGPTQ / GPTQModel one from the Hub: v1 or v2, 2/3/4/8 bits,
    act-order, sharded or not) into a transformers model whose quantized linears are QuantLinear.

    The model is built from its config with parameters on the meta device, and each tensor is materialized
    once as it is read, so peak memory is about the model's final size. dtype: of the dense parameters
    (activations run in it: float32 or bfloat16 on the CPU)."""
    import transformers
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json")
    files = _weight_files(path)
    config = transformers.AutoConfig.from_pretrained(str(path))
    qcfg = _quantization_config(path, config)

    keys: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    keys[k] = f
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from None
    quantized = sorted(k[:-len(".qweight")] for k in keys if k.endswith(".qweight"))
    if not quantized:
        raise CheckpointError(f"{path} declares GPTQ quantization but its weights hold no '.qweight' tensors")

    if any(q == getattr(config, "_lm_head_name", "lm_head") or q.endswith("lm_head") for q in quantized):
        config.tie_word_embeddings = False  # a quantized head no longer shares the embedding's weight
    cls = _model_class(config, model_class)
    with _parameters_on_meta():
        if hasattr(cls, "_from_config"):
            model = cls._from_config(config, dtype=dtype)
        elif hasattr(cls, "from_config"):  # an Auto* class
            model = cls.from_config(config, dtype=dtype)
        else:
            model = cls(config)

    layers: dict[str, QuantLinear] = {}
    for name in quantized:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint has a quantized layer {name!r} that {cls.__name__} does not have "
                                  "(config/weights mismatch)") from None
        if not is_linear_like(module):
            raise CheckpointError(f"{name} is a {type(module).__name__} in {cls.__name__}, not a linear layer")
        N, K = linear_weight(module).shape
        try:
            layer = QuantLinear(K, N, qcfg.bits, qcfg.group_size, bias=f"{name}.bias" in keys, sym=qcfg.sym,
                                checkpoint_format=qcfg.checkpoint_format)
        except ValueError as e:
            raise CheckpointError(f"{name}: {e}") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        layers[name] = layer

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}  # once: qweight is rebuilt per call
    unexpected = sorted(set(keys) - set(shapes) - {f"{n}.qweight" for n in layers})
    if unexpected:
        raise CheckpointError(f"checkpoint tensors the model does not have (config/weights mismatch): "
                              f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")

    pending: dict[str, dict] = {n: {} for n in layers}
    dense: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                t = sf.get_tensor(k)
                owner, _, leaf = k.rpartition(".")
                if owner in pending and leaf in QUANT_FILES:
                    pending[owner][leaf] = t
                else:
                    dense[k] = t.to(dtype) if t.is_floating_point() else t
        _load_dense(model, dense, shapes)
        dense.clear()
        for name in [n for n, got in pending.items() if "qweight" in got and "qzeros" in got and "scales" in got]:
            _load_quant_layer(layers[name], name, pending.pop(name))
    for name, got in pending.items():
        need = [leaf for leaf in ("qweight", "qzeros", "scales") if leaf not in got]
        raise CheckpointError(f"{name}: checkpoint is missing {need}")

    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise CheckpointError(f"checkpoint is missing tensors: {still_meta[:8]}{' ...' if len(still_meta) > 8 else ''}")
    model.config.quantization_config = qcfg.to_dict()
    model.eval()
    return model.to(device)


def _load_dense(model: nn.Module, tensors: dict, shapes: dict):
    if not tensors:
        return
    for k, t in tensors.items():
        if shapes[k] != tuple(t.shape):
            raise CheckpointError(f"{k}: checkpoint has shape {tuple(t.shape)}, the model expects {shapes[k]} "
                                  "(config/weights mismatch)")
    model.load_state_dict(tensors, strict=False, assign=True)


def _load_quant_layer(layer: QuantLinear, name: str, tensors: dict):
    if "g_idx" in tensors:
        tensors["g_idx"] = tensors["g_idx"].to(torch.int32)
    if "bias" in tensors:
        tensors["bias"] = tensors["bias"].to(torch.float16)
    try:
        layer.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: {e}") from None

