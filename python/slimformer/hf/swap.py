"""Module swapping shared by every compression method."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn
from tqdm.auto import tqdm


def _conv1d_type():
    try:
        from transformers.pytorch_utils import Conv1D
        return Conv1D
    except ImportError:  # transformers is optional for plain PyTorch models
        return None


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2: y = x @ W + b with W stored [in, out])."""
    if isinstance(module, nn.Linear):
        return True
    conv1d = _conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def linear_weight(module: nn.Module):
    """The weight of a linear-like module in nn.Linear layout [out_features, in_features] (a view)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_linear_like(module):
        return module.weight.t()
    raise TypeError(f"expected nn.Linear or Conv1D, got {type(module).__name__}")


def replace_linear(model: nn.Module, factory: Callable[[str, nn.Module], nn.Module], *,
                   include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ("lm_head", "*.lm_head"),
                   progress: bool = True) -> list[str]:
    """Replaces every nn.Linear (or Conv1D) whose qualified name matches `include` and not `exclude` with factory(name, module).

    Returns the names replaced. Embeddings, norms and (by default) lm_head stay as they are."""
    targets = [(name, m) for name, m in model.named_modules()
               if is_linear_like(m) and any(fnmatch.fnmatch(name, p) for p in include)
               and not any(fnmatch.fnmatch(name, p) for p in exclude)]
    if not targets:
        raise ValueError(f"no nn.Linear modules matched include={include} exclude={exclude} in "
                         f"{type(model).__name__}")
    for name, module in tqdm(targets, desc="replacing linear layers", disable=not progress):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, factory(name, module))
    return [n for n, _ in targets]
