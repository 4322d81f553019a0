"""Sparse24Linear checkpoints in the compressed-tensors "sparse-24-bitmask" layout (what llm-compressor wrote for the
Hub's 2:4 models until compressed-tensors 0.14), written and read by our own code: a registry row of
slimformer.hf.checkpoint.

Per layer `<layer>.compressed` (the kept values [out, in/2] in the weight's dtype), `<layer>.bitmask` (uint8
[out, ceil(in/8)], numpy's little bit order), `<layer>.shape` (int64 [2, 1]: out, in) and an uncompressed
`<layer>.bias`. config.json: quantization_config = {"quant_method": "compressed-tensors", "sparsity_config":
{"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": [...], "ignore": [...],
"global_sparsity": ...}, ...}. Other N:M ratios are written the same way with their own sparsity_structure ("4:8"):
the tensors decompress with compressed-tensors' own code, whose compressor only writes 2:4.

2:4 + int4 layers (Sparse24QuantLinear) are written in the same config family, in a layout of ours (compressed-tensors
has no 2:4 + int4 layout it can read back: llm-compressor wrote such models in its "marlin-24" GPU tile layout, whose
compressor cannot decompress): the block gains "format": "slimformer-sparse-24-int4" and a config group
{"targets": [layer names], "weights": {"num_bits": 4, "type": "int", "strategy": "group" | "channel", "group_size",
"symmetric"}} per group size, and each such layer's `<layer>.compressed` is uint8 [out, in/4]: the 4-bit codes of its
kept values (format.py: two a byte, the low nibble first), with `<layer>.weight_scale` [out, groups] (fp16) and
`<layer>.weight_zero_point` uint8 [out, groups] (kept weight = (code - zero) * scale; 8 for the symmetric grid), the
bitmask, shape and bias as above. compressed-tensors refuses the format by name rather than misreading it."""
from __future__ import annotations

import re

import torch
from torch import nn

from ..hf.checkpoint import CheckpointError, CheckpointMethod, register_checkpoint_method
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt
from .module import Sparse24Linear, Sparse24QuantLinear

FORMAT = "sparse-24-bitmask"
INT4_FORMAT = "slimformer-sparse-24-int4"
LAYOUT_VERSION = "0.14.0.1"  # the last compressed-tensors release with the sparse-24-bitmask compressor
LEAVES = ("compressed", "bitmask", "shape", "bias", "weight_scale", "weight_zero_point")


def _structure(block: dict) -> tuple[int, int]:
    sc = block.get("sparsity_config")
    if not isinstance(sc, dict) or not sc:
        groups = block.get("config_groups")
        what = f"quantization ({block.get('format', '?')})" if groups else "no sparsity_config"
        raise CheckpointError(f"compressed-tensors checkpoint with {what}: slimformer reads its {FORMAT!r} sparsity "
                              "(2:4 layers) only")
    if block.get("config_groups") and block.get("format") != INT4_FORMAT:
        raise CheckpointError(f"compressed-tensors checkpoint combines sparsity with quantization format "
                              f"{block.get('format', '?')!r}: slimformer reads {FORMAT!r} alone or with its own "
                              f"{INT4_FORMAT!r} (marlin-24 and the other quantized layouts are not read)")
    if sc.get("format") != FORMAT:
        raise CheckpointError(f"compressed-tensors sparsity format {sc.get('format')!r}: slimformer reads {FORMAT!r}")
    structure = str(sc.get("sparsity_structure", "2:4"))
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", structure)
    if not match:
        raise CheckpointError(f"sparsity_structure {structure!r} is not N:M")
    n, m = int(match.group(1)), int(match.group(2))
    try:
        fmt.check_nm(n, m)
    except ValueError as e:
        raise CheckpointError(f"sparsity_structure {structure!r}: {e}") from None
    return n, m


def _int4_group(block: dict, name: str) -> dict:
    """The weights args of the config group that targets layer `name` (2:4 + int4)."""
    for group in (block.get("config_groups") or {}).values():
        if isinstance(group, dict) and name in (group.get("targets") or []):
            weights = group.get("weights")
            if (not isinstance(weights, dict) or weights.get("num_bits") != 4 or weights.get("type", "int") != "int"
                    or not isinstance(weights.get("group_size", -1), (int, type(None)))):
                raise CheckpointError(f"{name}: config group weights must be 4-bit int with an integer group_size, "
                                      f"got {weights!r}")
            return weights
    raise CheckpointError(f"{name} holds int4 scales but no config group of the {INT4_FORMAT!r} block targets it")


def config_block(model: nn.Module, layers: dict[str, nn.Module]) -> dict:
    ratios = {(layer.n, layer.m) for layer in layers.values()}
    if len(ratios) > 1:
        raise ValueError(f"the model mixes N:M ratios {sorted(ratios)}; one checkpoint holds one sparsity_structure")
    n, m = ratios.pop()
    pruned = sum(layer.out_features * layer.in_features * (m - n) // m for layer in layers.values())
    total = sum(p.numel() for p in model.parameters()) + sum(
        layer.out_features * layer.in_features for layer in layers.values())
    # exactly the keys compressed-tensors writes for a sparsity-only model (any other top-level key would read as a
    # quantization config there); "version" is the compressed-tensors layout this follows
    block = {
        "quant_method": "compressed-tensors",
        "version": LAYOUT_VERSION,
        "sparsity_config": {"format": FORMAT, "sparsity_structure": f"{n}:{m}", "targets": list(layers),
                            "ignore": [], "global_sparsity": pruned / max(total, 1),
                            "registry_requires_subclass": False},
        "transform_config": {},
    }
    groups: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        if isinstance(layer, Sparse24QuantLinear):
            gs = -1 if layer.group_size in (-1, layer.in_features) else layer.group_size
            groups.setdefault((gs, bool((layer.zeros == 8).all())), []).append(name)
    if groups:
        block["format"] = INT4_FORMAT
        block["quantization_status"] = "compressed"
        block["config_groups"] = {
            f"group_{i}": {"targets": names, "weights": {
                "num_bits": 4, "type": "int", "symmetric": sym, "strategy": "channel" if gs == -1 else "group",
                "group_size": None if gs == -1 else gs, "dynamic": False, "observer": "minmax"},
                "input_activations": None, "output_activations": None}
            for i, ((gs, sym), names) in enumerate(sorted(groups.items(), key=lambda kv: kv[1][0]))}
    return block


def _state(name: str, layer: nn.Module, block: dict) -> dict:
    shape = torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64).reshape(-1, 1)
    if isinstance(layer, Sparse24QuantLinear):
        qvalues, bitmask = layer.plain()
        return {"compressed": qvalues, "bitmask": bitmask, "shape": shape, "bias": layer.bias,
                "weight_scale": layer.scales, "weight_zero_point": layer.zeros}
    return {"compressed": layer.values, "bitmask": layer.bitmask, "shape": shape, "bias": layer.bias}


def _build(name: str, dense: nn.Module, block: dict, present: set, dtype) -> nn.Module:
    n, m = _structure(block)
    if not is_linear_like(dense):
        raise CheckpointError(f"{name} is a {type(dense).__name__} in the model, not a linear layer")
    N, K = linear_weight(dense).shape
    if "weight_scale" in present or "weight_zero_point" in present:
        if (n, m) != (2, 4) or block.get("format") != INT4_FORMAT:
            raise CheckpointError(f"{name} holds int4 scales, which need sparsity 2:4 and format {INT4_FORMAT!r}")
        weights = _int4_group(block, name)
        gs = weights.get("group_size") or -1
        try:
            return Sparse24QuantLinear(K, N, bias="bias" in present, group_size=gs)
        except ValueError as e:
            raise CheckpointError(f"{name}: {e}") from None
    values_dtype = dtype if dtype in fmt.FLOAT_DTYPES else torch.float32
    return Sparse24Linear(K, N, bias="bias" in present, n=n, m=m, dtype=values_dtype)


def _load_int4(layer: Sparse24QuantLinear, name: str, tensors: dict, out_f: int, in_f: int):
    for leaf in ("weight_scale", "weight_zero_point"):
        if leaf not in tensors:
            raise CheckpointError(f"{name}.{leaf} is missing (a 2:4 + int4 layer needs codes, scales and zero points)")
    q, bitmask, scales, zeros = (tensors[k] for k in ("compressed", "bitmask", "weight_scale", "weight_zero_point"))
    try:
        fmt.check_int4(q, bitmask, scales, zeros, (out_f, in_f), layer.group_size)
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from None
    if not bool(torch.isfinite(scales).all()):
        raise CheckpointError(f"{name}.weight_scale holds NaN or inf values")
    layer.set_plain(q.contiguous(), bitmask.contiguous())
    layer.scales, layer.zeros = scales.contiguous(), zeros.contiguous()


def _load(layer: nn.Module, name: str, tensors: dict, block: dict):
    shape = tensors["shape"]
    if shape.is_floating_point() or shape.numel() != 2:
        raise CheckpointError(f"{name}.shape must hold the two integers [out, in], got {shape.dtype} "
                              f"{list(shape.shape)}")
    out_f, in_f = (int(v) for v in shape.flatten())
    if (out_f, in_f) != (layer.out_features, layer.in_features):
        raise CheckpointError(f"{name}.shape says [{out_f}, {in_f}], the model's layer is "
                              f"[{layer.out_features}, {layer.in_features}] (config/weights mismatch)")
    if isinstance(layer, Sparse24QuantLinear):
        _load_int4(layer, name, tensors, out_f, in_f)
    else:
        _load_values(layer, name, tensors, out_f, in_f)
    if "bias" in tensors:
        bias = tensors["bias"]
        if not bias.is_floating_point() or tuple(bias.shape) != (out_f,):
            raise CheckpointError(f"{name}.bias must be a floating-point [{out_f}] tensor, got {bias.dtype} "
                                  f"{list(bias.shape)}")
        layer.bias = bias.to(layer.values.dtype) if isinstance(layer, Sparse24Linear) else bias.contiguous()


def _load_values(layer: Sparse24Linear, name: str, tensors: dict, out_f: int, in_f: int):
    for leaf in ("weight_scale", "weight_zero_point"):
        if leaf in tensors:
            raise CheckpointError(f"{name}.{leaf} belongs to a 2:4 + int4 layer, but {name} has no config group")
    values, bitmask = tensors["compressed"], tensors["bitmask"]
    if values.dtype not in fmt.FLOAT_DTYPES:
        raise CheckpointError(f"{name}.compressed must be fp32, bf16 or fp16, got {values.dtype}")
    if bitmask.dtype != torch.uint8:
        raise CheckpointError(f"{name}.bitmask must be uint8 (packed bits), got {bitmask.dtype}")
    try:
        fmt.check_compressed(values, bitmask, (out_f, in_f), layer.n, layer.m)
    except ValueError as e:
        raise CheckpointError(f"{name}: {e}") from None
    layer.values = values.to(layer.values.dtype).contiguous()
    layer.bitmask = bitmask.contiguous()


SPARSE24_CHECKPOINT = register_checkpoint_method(CheckpointMethod(
    name="sparse24", module_type=(Sparse24Linear, Sparse24QuantLinear), leaves=LEAVES,
    required=("compressed", "bitmask", "shape"),
    marker="bitmask", quant_methods=("compressed-tensors",), config_block=config_block, build=_build, load=_load,
    state=_state), replace=True)
