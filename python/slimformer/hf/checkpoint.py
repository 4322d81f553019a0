"""Compressed checkpoints in the Hugging Face layout, for every method: save_pretrained / load_pretrained.

A checkpoint is a directory with config.json (the model config plus a quantization_config block), the weights in
safetensors files (sharded with model.safetensors.index.json past max_shard_size), and whatever extra files a
method's ecosystem expects (GPTQ also writes quantize_config.json). Reading is safetensors only: pickle files are
refused, never unpickled.

Each compression method is one row of a registry (`register_checkpoint_method`), so a new method adds a row and no
branch here. A row says which module class its layers are, which tensor leaves a layer owns (`<layer>.<leaf>`),
which leaf marks a layer of the method in a weights file, how to write its config block, and how to build an empty
module from the dense one in the model skeleton and fill it. A model may mix methods (2:4 FFN + int4 attention):

  one method      quantization_config = that method's own block (e.g. the Hub GPTQ block, quant_method "gptq"),
                  so peers that know the method read it; its layers are found by the marker leaf
  several         quantization_config = {"quant_method": "slimformer", "methods": {row name: {"config": block,
                  "modules": [layer names]}}}

Loading builds the model from its config with parameters on the meta device, replaces each compressed layer with
its method's empty module, and materializes every tensor once as it is read, so peak memory is about the model's
final size."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MIXED_METHOD = "slimformer"  # quant_method of a config block that holds several methods


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model its config describes."""


# -------------------------------------------------------------------------------------------------- registry
def _default_state(name: str, module: nn.Module, block: dict) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


def _default_load(module: nn.Module, name: str, tensors: dict[str, torch.Tensor], block: dict):
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{name}: {e}") from None


@dataclass(frozen=True)
class CheckpointMethod:
    """One compression method's checkpoint format.

    name          registry key and the key of the method's block in a mixed config
    module_type   the module class of its compressed layers (what save_pretrained looks for), or a tuple of them
    leaves        every tensor leaf a layer may own: `<layer>.<leaf>` in the weights
    required      the leaves every layer has (a layer is complete, and loaded, once these have been read)
    marker        the leaf that marks a layer of this method in a single-method checkpoint
    quant_methods the quant_method values of config blocks this row reads (the first is the one it writes)
    config_block  (model, {name: module}) -> the config block to write; checks that the layers agree with it
    build         (name, dense module from the skeleton, block, leaves present, dtype) -> empty module to fill
    load          (module, name, {leaf: tensor}, block) -> None; fills the module, CheckpointError on bad tensors
    state         (name, module, block) -> {leaf: tensor} to save (default: the module's state_dict)
    write_extra   (directory, block) -> None: extra files a single-method checkpoint carries, or None
    read_legacy   (directory) -> block or None: a config block kept outside config.json (older layouts), or None
    """
    name: str
    module_type: type | tuple[type, ...]
    leaves: tuple[str, ...]
    required: tuple[str, ...]
    marker: str
    quant_methods: tuple[str, ...]
    config_block: Callable[[nn.Module, dict], dict]
    build: Callable[..., nn.Module]
    load: Callable[[nn.Module, str, dict, dict], None] = _default_load
    state: Callable[[str, nn.Module, dict], dict] = _default_state
    write_extra: Callable[[Path, dict], None] | None = None
    read_legacy: Callable[[Path], dict | None] | None = None

    def __post_init__(self):
        if self.marker not in self.required or not set(self.required) <= set(self.leaves):
            raise ValueError(f"checkpoint method {self.name!r}: marker {self.marker!r} must be a required leaf and "
                             f"required leaves {self.required} a subset of leaves {self.leaves}")
        if not self.quant_methods:
            raise ValueError(f"checkpoint method {self.name!r} needs at least one quant_method")


METHODS: dict[str, CheckpointMethod] = {}


def register_checkpoint_method(method: CheckpointMethod, *, replace: bool = False) -> CheckpointMethod:
    """Adds a method's row. replace=True swaps an existing row of the same name (tests, reloads)."""
    if not isinstance(method, CheckpointMethod):
        raise TypeError(f"expected a CheckpointMethod, got {type(method).__name__}")
    if not replace:
        if method.name in METHODS:
            raise ValueError(f"checkpoint method {method.name!r} is already registered")
        for other in METHODS.values():
            clash = set(method.quant_methods) & set(other.quant_methods)
            if clash:
                raise ValueError(f"quant_method {sorted(clash)} of {method.name!r} is already read by {other.name!r}")
    if MIXED_METHOD in method.quant_methods:
        raise ValueError(f"quant_method {MIXED_METHOD!r} is reserved for mixed-method checkpoints")
    METHODS[method.name] = method
    return method


def unregister_checkpoint_method(name: str):
    METHODS.pop(name, None)


def _row_for_quant_method(quant_method) -> CheckpointMethod:
    qm = str(quant_method).lower()
    for row in METHODS.values():
        if qm in row.quant_methods:
            return row
    known = sorted(q for row in METHODS.values() for q in row.quant_methods)
    raise CheckpointError(f"quantization_config has quant_method={quant_method!r}; slimformer reads {known} "
                          f"(and {MIXED_METHOD!r} for mixed-method checkpoints)")


def compressed_layers(model: nn.Module) -> dict[str, dict[str, nn.Module]]:
    """{row name: {layer name: module}} of every registered method's layers in model, in module order."""
    out: dict[str, dict[str, nn.Module]] = {}
    for name, module in model.named_modules():
        for row in METHODS.values():
            if isinstance(module, row.module_type):
                out.setdefault(row.name, {})[name] = module
                break
    return out


# ------------------------------------------------------------------------------------------------------ save
def _parse_size(size) -> int:
    if isinstance(size, bool):
        raise ValueError(f"max_shard_size must be a size such as '4GB' or a number of bytes, got {size!r}")
    if isinstance(size, int):
        n = size
    else:
        s = str(size).strip().upper()
        for unit, mult in (("GB", 10 ** 9), ("MB", 10 ** 6), ("KB", 10 ** 3), ("B", 1)):
            if s.endswith(unit):
                s, scale = s[:-len(unit)], mult
                break
        else:
            scale = 1
        try:
            n = int(float(s) * scale)
        except ValueError:
            raise ValueError(f"max_shard_size must be a size such as '4GB' or a number of bytes, "
                             f"got {size!r}") from None
    if n <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return n


def _state_dict_for_save(model: nn.Module, layers: dict, blocks: dict) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    for row_name, group in layers.items():
        row = METHODS[row_name]
        for name, module in group.items():
            prefix = f"{name}." if name else ""
            for key in [k for k in state if k.startswith(prefix) and "." not in k[len(prefix):]]:
                del state[key]
            for leaf, t in row.state(name, module, blocks[row_name]).items():
                if leaf not in row.leaves:
                    raise CheckpointError(f"{row.name} layer {name} saves a tensor {leaf!r} that is not one of its "
                                          f"leaves {row.leaves}")
                if t is not None:
                    state[prefix + leaf] = t
    out, seen = {}, {}
    for key, t in state.items():
        if t is None:
            continue
        t = t.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and ident in seen:
            continue  # tied weight (lm_head = embed_tokens): stored once, re-tied at load
        seen[ident] = key
        out[key] = t.to("cpu").contiguous()
    return out


def _head_is_compressed(model: nn.Module, layers: dict) -> bool:
    from .calibrate import head_name
    names = {n for group in layers.values() for n in group}
    head = head_name(model)
    if head is not None:
        return head in names
    return any(n == "lm_head" or n.endswith(".lm_head") for n in names)


def save_pretrained(model: nn.Module, save_directory, *, max_shard_size="4GB", tokenizer=None) -> Path:
    """Writes a compressed model: config.json with its quantization_config, the weights as safetensors (shards and
    an index past max_shard_size), and the method's extra files. Returns the directory."""
    from safetensors.torch import save_file

    limit = _parse_size(max_shard_size)
    save_directory = Path(save_directory)
    if save_directory.exists() and not save_directory.is_dir():
        raise NotADirectoryError(f"save_directory {save_directory} exists and is not a directory")
    layers = compressed_layers(model)
    if not layers:
        kinds = ", ".join(t.__name__ for row in METHODS.values()
                          for t in (row.module_type if isinstance(row.module_type, tuple) else (row.module_type,)))
        raise ValueError(f"{type(model).__name__} has no compressed layers ({kinds}): compress it first "
                         "(slimformer.quantize, slimformer.sparsify)")
    blocks = {name: METHODS[name].config_block(model, group) for name, group in layers.items()}
    if len(blocks) == 1:
        qcfg = next(iter(blocks.values()))
    else:
        qcfg = {"quant_method": MIXED_METHOD,
                "methods": {name: {"config": blocks[name], "modules": list(layers[name])} for name in blocks}}
    state = _state_dict_for_save(model, layers, blocks)

    shards, current, size = [], {}, 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    shards.append(current)
    save_directory.mkdir(parents=True, exist_ok=True)
    for old in list(save_directory.glob("model*.safetensors")) + [save_directory / INDEX_NAME]:
        if old.is_file():
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
    # the class that was saved, not the one the dense config was written for (AutoModel on a *ForMaskedLM config)
    cfg_dict["architectures"] = [type(model).__name__]
    if _head_is_compressed(model, layers):
        cfg_dict["tie_word_embeddings"] = False  # a compressed head has its own weight
    (save_directory / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True, default=str) + "\n")
    if len(blocks) == 1:
        row = METHODS[next(iter(blocks))]
        if row.write_extra is not None:
            row.write_extra(save_directory, qcfg)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(save_directory))
    return save_directory


# ------------------------------------------------------------------------------------------------------ load
def _regular_file(f: Path, root: Path, what: str) -> Path:
    """f, checked to lie inside root and to be a regular file (a FIFO or device named there would block or
    stream forever)."""
    try:
        resolved = f.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise CheckpointError(f"{what} {f.name!r} does not exist in {root}") from None
    if not resolved.is_relative_to(root.resolve()):
        raise CheckpointError(f"{what} {str(f)!r} lies outside the checkpoint directory {root}")
    if not resolved.is_file():
        raise CheckpointError(f"{what} {str(f)!r} is not a regular file")
    return resolved


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory (from its index when there is one), each checked to be a
    regular file inside it; pickle-only directories are refused with a clear error."""
    path = Path(path)
    index = path / INDEX_NAME
    if index.exists():
        _regular_file(index, path, "index")
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({type(e).__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                       for k, v in weight_map.items()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names (strings)")
        names = sorted(set(weight_map.values()))
        for n in names:
            if Path(n).is_absolute() or Path(n).name != n:
                raise CheckpointError(f"{index} names a shard {n!r} outside the checkpoint directory: shard "
                                      "entries must be plain file names")
        return [_regular_file(path / n, path, "shard") for n in names]
    files = sorted(f for f in path.glob("*.safetensors"))
    if files:
        return [_regular_file(f, path, "weights file") for f in files]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(f"{path} holds only pickle checkpoints ({', '.join(pickles)}); slimformer reads "
                              "safetensors only and never unpickles files. Convert them to safetensors first.")
    raise CheckpointError(f"no .safetensors weights found in {path}")


def _config_blocks(path: Path, config) -> dict[str, tuple[dict, list[str] | None]]:
    """{row name: (config block, layer names or None = found by the row's marker)}."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        for row in METHODS.values():
            if row.read_legacy is not None:
                block = row.read_legacy(path)
                if block is not None:
                    return {row.name: (block, None)}
        raise CheckpointError(f"{path} has no quantization_config in config.json (nor a method's own config file): "
                              "not a compressed checkpoint")
    if not isinstance(qc, dict):
        qc = qc.to_dict()
    quant_method = qc.get("quant_method")
    if str(quant_method).lower() != MIXED_METHOD or "methods" not in qc:
        return {_row_for_quant_method(quant_method).name: (qc, None)}
    methods = qc["methods"]
    if not isinstance(methods, dict) or not methods:
        raise CheckpointError(f"{path}: a mixed-method quantization_config needs a non-empty 'methods' mapping")
    out = {}
    for name, entry in methods.items():
        if name not in METHODS:
            raise CheckpointError(f"{path}: quantization_config uses method {name!r}, which is not registered "
                                  f"(known: {sorted(METHODS)})")
        if (not isinstance(entry, dict) or not isinstance(entry.get("config"), dict)
                or not isinstance(entry.get("modules"), list)
                or not all(isinstance(m, str) for m in entry["modules"])):
            raise CheckpointError(f"{path}: quantization_config.methods[{name!r}] must be "
                                  "{'config': {...}, 'modules': [layer names]}")
        out[name] = (entry["config"], list(entry["modules"]))
    return out


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


def resolve_model_class(config, model_class=None):
    """The transformers class named by config.architectures (model_class when given, AutoModel when the config
    names none); a name transformers does not have is an error, not a silent AutoModel."""
    if model_class is not None:
        return model_class
    import transformers
    archs = getattr(config, "architectures", None) or []
    for arch in archs:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    if archs:
        raise CheckpointError(f"config.architectures names {archs}, which transformers does not have: pass "
                              "model_class= to load it")
    return transformers.AutoModel


def _read_keys(files: list[Path]) -> dict[str, Path]:
    from safetensors import safe_open

    keys: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                names = list(sf.keys())
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
            raise CheckpointError(f"{f} is not a readable safetensors file: {e}") from None
        for k in names:
            if k in keys:
                raise CheckpointError(f"tensor {k!r} is stored twice, in {keys[k].name} and {f.name}: the "
                                      "checkpoint is ambiguous")
            keys[k] = f
    return keys


def load_pretrained(path, *, dtype: torch.dtype = torch.float32, device="cpu", model_class=None) -> nn.Module:
    """Loads a compressed checkpoint (ours, or one a peer of a registered method wrote: for GPTQ, AutoGPTQ and
    GPTQModel checkpoints from the Hub, v1 or v2, 2/3/4/8 bits, act-order, sharded or not) into a transformers
    model whose compressed layers are the methods' modules.

    dtype: of the dense parameters (activations run in it: float32 or bfloat16 on the CPU). model_class: the
    transformers class to build, when config.architectures does not name one transformers has."""
    import transformers
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; load_pretrained expects a checkpoint directory")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json")
    files = weight_files(path)
    try:
        config = transformers.AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'} cannot be read as a transformers config: {e}") from None
    blocks = _config_blocks(path, config)
    keys = _read_keys(files)
    leaves_of: dict[str, set[str]] = {}  # module name -> the tensor leaves the checkpoint holds for it
    for k in keys:
        owner, _, leaf = k.rpartition(".")
        leaves_of.setdefault(owner, set()).add(leaf)

    # which layer belongs to which method
    owner_of: dict[str, str] = {}
    for row_name, (block, modules) in blocks.items():
        row = METHODS[row_name]
        marked = sorted(o for o, leaves in leaves_of.items() if o and row.marker in leaves)
        if modules is None:
            modules = marked
            if not modules:
                raise CheckpointError(f"{path} declares {row.name} compression but its weights hold no "
                                      f"'.{row.marker}' tensors")
        else:
            unlisted = sorted(set(marked) - set(modules))
            absent = sorted(set(modules) - set(marked))
            if absent:
                raise CheckpointError(f"{row.name} layers listed in quantization_config have no '.{row.marker}' "
                                      f"tensor: {absent[:8]}")
            if unlisted and len(blocks) > 1:
                raise CheckpointError(f"tensors '.{row.marker}' of layers not listed as {row.name}: {unlisted[:8]}")
        for name in modules:
            if name in owner_of:
                raise CheckpointError(f"layer {name} is claimed by two methods: {owner_of[name]} and {row.name}")
            owner_of[name] = row.name
    head_name = getattr(config, "_lm_head_name", "lm_head")
    if any(n == head_name or n.endswith(".lm_head") for n in owner_of):
        config.tie_word_embeddings = False  # a compressed head no longer shares the embedding's weight

    cls = resolve_model_class(config, model_class)
    with _parameters_on_meta():
        if hasattr(cls, "_from_config"):
            model = cls._from_config(config, dtype=dtype)
        elif hasattr(cls, "from_config"):  # an Auto* class
            model = cls.from_config(config, dtype=dtype)
        else:
            model = cls(config)

    layers: dict[str, nn.Module] = {}
    for name, row_name in owner_of.items():
        row = METHODS[row_name]
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"checkpoint has a {row.name} layer {name!r} that {cls.__name__} does not have "
                                  "(config/weights mismatch)") from None
        try:
            layer = row.build(name, dense, blocks[row_name][0], leaves_of.get(name, set()), dtype)
        except CheckpointError:
            raise
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{name}: {e}") from None
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
        layers[name] = layer

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    owned = {f"{n}.{leaf}" for n, r in owner_of.items() for leaf in METHODS[r].leaves}
    unexpected = sorted(k for k in keys if k not in shapes and k not in owned)
    if unexpected:
        raise CheckpointError(f"checkpoint tensors the model does not have (config/weights mismatch): "
                              f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")

    pending: dict[str, dict] = {n: {} for n in layers}
    dense_tensors: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                t = sf.get_tensor(k)
                owner, _, leaf = k.rpartition(".")
                if owner in pending and leaf in METHODS[owner_of[owner]].leaves:
                    pending[owner][leaf] = t
                else:
                    dense_tensors[k] = t.to(dtype) if t.is_floating_point() else t
        _load_dense(model, dense_tensors, shapes)
        dense_tensors.clear()
        for name in [n for n, got in pending.items() if set(METHODS[owner_of[n]].required) <= set(got)]:
            row_name = owner_of[name]
            METHODS[row_name].load(layers[name], name, pending.pop(name), blocks[row_name][0])
    for name, got in pending.items():
        need = [leaf for leaf in METHODS[owner_of[name]].required if leaf not in got]
        raise CheckpointError(f"{name}: checkpoint is missing {need}")

    if getattr(config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
    still_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if still_meta:
        raise CheckpointError(f"checkpoint is missing tensors: {still_meta[:8]}{' ...' if len(still_meta) > 8 else ''}")
    model.config.quantization_config = getattr(config, "quantization_config", None) or next(iter(blocks.values()))[0]
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
