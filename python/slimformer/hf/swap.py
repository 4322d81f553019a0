"""Module swapping shared by every compression method."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn
from tqdm.auto import tqdm


def _linear_like(module: nn.Module) -> bool:
    # nn.Linear, and GPT-2's Conv1D (weight stored [in, out]) handled by the caller's factory.
    return isinstance(module, nn.Linear)


def replace_linear(model: nn.Module, factory: Callable[[str, nn.Module], nn.Module], *,
                   include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ("lm_head", "*.lm_head"),
                   progress: bool = True) -> list[str]:
    """Replaces every nn.Linear whose qualified name matches `include` and not `exclude` with factory(name, module).

    Returns the names replaced. Embeddings, norms and (by default) lm_head stay as they are."""
    targets = [(name, m) for name, m in model.named_modules()
               if _linear_like(m) and any(fnmatch.fnmatch(name, p) for p in include)
               and not any(fnmatch.fnmatch(name, p) for p in exclude)]
    if not targets:
        raise ValueError(f"no nn.Linear modules matched include={include} exclude={exclude} in "
                         f"{type(model).__name__}")
    for name, module in tqdm(targets, desc="replacing linear layers", disable=not progress):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, factory(name, module))
    return [n for n, _ in targets]
