"""How many tokens each layer removes: from `r`, `keep` or a FLOP target, and the FLOP model behind the target.

A layer with n tokens in and n' out (pruning sits between its attention and its feed-forward part) costs, in
multiply-adds, 4 n C^2 (the q, k, v and output projections) + 2 n^2 C (scores and the weighted sum) + 2 n' C F
(the feed-forward pair). Embeddings and heads are left out: they are the same with and without pruning.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int
    tokens: int
    protected: int = 1


def layer_flops(n_in: int, n_out: int, hidden: int, ffn: int) -> float:
    return 4 * n_in * hidden ** 2 + 2 * n_in ** 2 * hidden + 2 * n_out * hidden * ffn


def flops(shape: Shape, removed: list[int]) -> float:
    """Multiply-adds of the encoder when layer l removes removed[l] tokens."""
    n, total = shape.tokens, 0.0
    for l in range(shape.layers):
        out = n - removed[l]
        total += layer_flops(n, out, shape.hidden, shape.ffn)
        n = out
    return total


def flops_fraction(shape: Shape, removed: list[int]) -> float:
    return flops(shape, removed) / flops(shape, [0] * shape.layers)


def clamp(shape: Shape, removed: list[int], bipartite: bool = False) -> list[int]:
    """Removals that never take a layer below protected + 1 tokens; with bipartite (ToMe), at most half of a layer's
    unprotected tokens (the merged ones come from one of two alternating sets)."""
    out, n = [], shape.tokens
    for r in removed:
        cap = (n - shape.protected) // 2 if bipartite else n - shape.protected - 1
        r = max(0, min(r, cap))
        out.append(r)
        n -= r
    return out


def from_r(shape: Shape, r: int | list[int], bipartite: bool = False) -> list[int]:
    rs = [r] * shape.layers if isinstance(r, int) else list(r) + [0] * (shape.layers - len(r))
    return clamp(shape, rs[:shape.layers], bipartite)


def from_keep(shape: Shape, keep: list[float], bipartite: bool = False) -> list[int]:
    """keep[l]: the fraction of the tokens entering layer l that leave it (missing layers keep everything)."""
    removed, n = [], shape.tokens
    for l in range(shape.layers):
        k = keep[l] if l < len(keep) else 1.0
        if not 0.0 < k <= 1.0:
            raise ValueError(f"keep ratios must be in (0, 1], got {k} for layer {l}")
        out = max(shape.protected + 1, int(round(n * k)))
        removed.append(n - out if out < n else 0)
        n = min(n, out)
    return clamp(shape, removed, bipartite)


def from_flops(shape: Shape, target: float, bipartite: bool = False, first_layer: int = 0,
               every: int = 1) -> tuple[list[int], float]:
    """The constant r, removed at layer first_layer and every `every`-th layer after it (every=1: ToMe's schedule, the
    same number of tokens leaves every layer; larger: fewer, larger cuts, as the staged schedules of DynamicViT and
    EViT), whose FLOP fraction is closest to `target`. Returns (removed per layer, the fraction it achieves)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"the FLOP target is the fraction of the unpruned FLOPs to keep, in (0, 1], got {target}")
    if not 0 <= first_layer < shape.layers or every < 1:
        raise ValueError(f"first_layer must be in [0, {shape.layers}) and every >= 1, got {first_layer} and {every}")
    prunes = [l >= first_layer and (l - first_layer) % every == 0 for l in range(shape.layers)]
    best = ([0] * shape.layers, 1.0)
    for r in range(0, shape.tokens):
        removed = clamp(shape, [r if p else 0 for p in prunes], bipartite)
        frac = flops_fraction(shape, removed)
        if abs(frac - target) < abs(best[1] - target):
            best = (removed, frac)
        if frac < target:
            break
    return best
