"""Sparse24Linear checkpoints in the compressed-tensors "sparse-24-bitmask" layout (what llm-compressor wrote for the
Hub's 2:4 models until compressed-tensors 0.14), written and read by our own code: a registry row of
slimformer.hf.checkpoint.

Per layer `<layer>.compressed` (the kept values [out, in/2] in the weight's dtype), `<layer>.bitmask` (uint8
[out, ceil(in/8)], numpy's little bit order), `<layer>.shape` (int64 [2, 1]: out, in) and an uncompressed
`<layer>.bias`. config.json: quantization_config = {"quant_method": "compressed-tensors", "sparsity_config":
{"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": [...], "ignore": [...],
"global_sparsity": ...}, ...}. Other N:M ratios are written the same way with their own sparsity_structure ("4:8"):
the tensors decompress with compressed-tensors' own code, whose compressor only writes 2:4."""
from __future__ import annotations

import re

import torch
from torch import nn

from ..hf.checkpoint import CheckpointError, CheckpointMethod, register_checkpoint_method
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt
from .module import Sparse24Linear

FORMAT = "sparse-24-bitmask"
LAYOUT_VERSION = "0.14.0.1"  # the last compressed-tensors release with the sparse-24-bitmask compressor
LEAVES = ("compressed", "bitmask", "shape", "bias")


def _structure(block: dict) -> tuple[int, int]:
    sc = block.get("sparsity_config")
    if not isinstance(sc, dict) or not sc:
        groups = block.get("config_groups")
        what = f"quantization ({block.get('format', '?')})" if groups else "no sparsity_config"
        raise CheckpointError(f"compressed-tensors checkpoint with {what}: slimformer reads its {FORMAT!r} sparsity "
                              "(2:4 layers) only")
    if block.get("config_groups"):
        raise CheckpointError(f"compressed-tensors checkpoint combines sparsity with quantization "
                              f"({block.get('format', '?')}): slimformer reads {FORMAT!r} alone")
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


def config_block(model: nn.Module, layers: dict[str, Sparse24Linear]) -> dict:
    ratios = {(layer.n, layer.m) for layer in layers.values()}
    if len(ratios) > 1:
        raise ValueError(f"the model mixes N:M ratios {sorted(ratios)}; one checkpoint holds one sparsity_structure")
    n, m = ratios.pop()
    pruned = sum(layer.out_features * layer.in_features * (m - n) // m for layer in layers.values())
    total = sum(p.numel() for p in model.parameters()) + sum(
        layer.out_features * layer.in_features for layer in layers.values())
    # exactly the keys compressed-tensors writes for a sparsity-only model (any other top-level key would read as a
    # quantization config there); "version" is the compressed-tensors layout this follows
    return {
        "quant_method": "compressed-tensors",
        "version": LAYOUT_VERSION,
        "sparsity_config": {"format": FORMAT, "sparsity_structure": f"{n}:{m}", "targets": list(layers),
                            "ignore": [], "global_sparsity": pruned / max(total, 1),
                            "registry_requires_subclass": False},
        "transform_config": {},
    }


def _state(name: str, layer: Sparse24Linear, block: dict) -> dict:
    return {"compressed": layer.values, "bitmask": layer.bitmask,
            "shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int64).reshape(-1, 1),
            "bias": layer.bias}


def _build(name: str, dense: nn.Module, block: dict, present: set, dtype) -> Sparse24Linear:
    n, m = _structure(block)
    if not is_linear_like(dense):
        raise CheckpointError(f"{name} is a {type(dense).__name__} in the model, not a linear layer")
    N, K = linear_weight(dense).shape
    values_dtype = dtype if dtype in fmt.FLOAT_DTYPES else torch.float32
    return Sparse24Linear(K, N, bias="bias" in present, n=n, m=m, dtype=values_dtype)


def _load(layer: Sparse24Linear, name: str, tensors: dict, block: dict):
    shape = tensors["shape"]
    if shape.is_floating_point() or shape.numel() != 2:
        raise CheckpointError(f"{name}.shape must hold the two integers [out, in], got {shape.dtype} "
                              f"{list(shape.shape)}")
    out_f, in_f = (int(v) for v in shape.flatten())
    if (out_f, in_f) != (layer.out_features, layer.in_features):
        raise CheckpointError(f"{name}.shape says [{out_f}, {in_f}], the model's layer is "
                              f"[{layer.out_features}, {layer.in_features}] (config/weights mismatch)")
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
    if "bias" in tensors:
        bias = tensors["bias"]
        if not bias.is_floating_point() or tuple(bias.shape) != (out_f,):
            raise CheckpointError(f"{name}.bias must be a floating-point [{out_f}] tensor, got {bias.dtype} "
                                  f"{list(bias.shape)}")
        layer.bias = bias.to(layer.values.dtype)


SPARSE24_CHECKPOINT = register_checkpoint_method(CheckpointMethod(
    name="sparse24", module_type=Sparse24Linear, leaves=LEAVES, required=("compressed", "bitmask", "shape"),
    marker="bitmask", quant_methods=("compressed-tensors",), config_block=config_block, build=_build, load=_load,
    state=_state), replace=True)
