"""Token pruning and merging algorithms in plain PyTorch: the specification the fused kernels are held to.

Conventions for one layer of a batch of B sequences of N tokens:
* probs [B, H, N, N]: softmax attention, rows are queries (each sums to 1 over the keys it may see), masked keys 0;
  attn [B, N, N] the same averaged over (some) heads. The model path gets them from the fused kernel
  (tokens/attention.py), which never materializes probs.
* valid [B, N] bool: real tokens (False for padding) or None (all real).
* protected: the leading tokens that are never removed (the class token; 2 for DeiT's class + distillation tokens).
* metric [B, N, C]: the features similarity is measured on (the layer's keys, heads concatenated).
* Every method removes the same number r of tokens from every sequence (the batch stays one tensor) and returns a
  Selection: `keep` [B, N - r] (the positions kept, in their original order, so the protected tokens stay first) and
  `target` [B, N] (for every token, the index into `keep` of the kept token that stands for it from now on: itself
  if kept, else the token it was merged into or, for a dropped token, its most similar kept token).

Padding: a sequence with p pad tokens loses min(r, p) pads first and only r - p real tokens by the method; pads are
never kept over real tokens and never chosen as anyone's representative. `select` handles that for every method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .. import ops


@dataclass
class Selection:
    keep: torch.Tensor    # [B, N - r] long, increasing
    target: torch.Tensor  # [B, N] long, index into keep
    merge: bool = False   # ToMe: the kept token becomes the size-weighted mean of the tokens that target it


# ----------------------------------------------------------------------------------------------- scores (I-stage)

def attention_received(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Attention each token receives, summed over the (real) queries and the heads: [B, N]. The fused attention
    kernel's importance output."""
    return received_per_head(probs, valid).sum(1)


def cls_attention(probs: torch.Tensor) -> torch.Tensor:
    """Attention the class token (query 0) pays each token, summed over heads: [B, N] (EViT's rule)."""
    return probs[:, :, 0, :].sum(dim=1)


def head_filter(received: torch.Tensor, valid: torch.Tensor | None = None, low: float = 0.0,
                high: float = 0.75) -> torch.Tensor:
    """Zero-TPrune's variance-based head filter on the attention each token receives per head, received [B, H, N]
    (the fused kernel's importance output; attention_received per head): head weights [B, H] in {0, 1}.

    A head whose received-attention distribution is nearly flat carries no ranking information, and one that pours
    almost everything into a token or two (attention sinks) drowns the rest; the filter keeps the heads whose
    variance of received attention (over the real tokens) lies between the `low` and `high` quantiles of the layer's
    heads (per sequence; the bounds are inclusive, so at least one head always survives). The paper bounds the
    variance with fixed thresholds tuned per model; quantiles carry over between models without tuning (our choice).
    """
    recv = received.float()
    if valid is None:
        var = recv.var(dim=-1, unbiased=False)
    else:
        w = valid[:, None, :].to(recv.dtype)
        n = w.sum(-1).clamp_min(1)
        mean = (recv * w).sum(-1) / n
        var = (((recv - mean[..., None]) ** 2) * w).sum(-1) / n
    lo = torch.quantile(var, low, dim=-1, keepdim=True)
    hi = torch.quantile(var, high, dim=-1, keepdim=True)
    return ((var >= lo) & (var <= hi)).to(recv.dtype)


def received_per_head(probs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, H, N]: attention each token receives in each head from the real queries."""
    return (probs if valid is None else probs * valid[:, None, :, None].to(probs.dtype)).sum(dim=2)


def head_mean(probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The head-averaged attention matrix [B, N, N] (over the heads with weight 1 when weights [B, H] is given)."""
    if weights is None:
        return probs.mean(dim=1)
    return (probs * weights[:, :, None, None]).sum(1) / weights.sum(1).clamp_min(1)[:, None, None]


def wpr(attn: torch.Tensor, valid: torch.Tensor | None = None, iterations: int = 30, protected: int = 1,
        emphasis: float | None = None) -> torch.Tensor:
    """Weighted PageRank over an attention graph attn [B, N, N] (rows: queries): importance [B, N].

    A token is important if important tokens attend to it: s <- attn^T s, i.e. s_j = sum_i attn[i, j] s_i, from an
    initial distribution that puts `emphasis` times a normal token's weight on each protected (class) token
    (default sqrt(N): the class token's row is the one the model reads out, so its view seeds the ranking) and 0 on
    pads. Rows of attn sum to 1, so the total of s is preserved and no renormalisation is needed; pads get no mass
    (their rows are excluded through s and, as masked keys, their columns are 0).
    """
    B, N, _ = attn.shape
    s = torch.ones(B, N, dtype=attn.dtype, device=attn.device)
    if protected:
        s[:, :protected] = math.sqrt(N) if emphasis is None else emphasis
    if valid is not None:
        s = s * valid.to(s.dtype)
    s = s / s.sum(-1, keepdim=True).clamp_min(1e-30)
    if ops.HAS_NATIVE and attn.device.type == "cpu" and attn.dtype == torch.float32:
        # the iterations of one sequence in one pass over its matrix, which stays in cache (csrc/tokens)
        return torch.ops.slimformer.wpr.default(attn, s, iterations)
    for _ in range(iterations):
        s = torch.bmm(s.unsqueeze(1), attn).squeeze(1)
    return s


# ------------------------------------------------------------------------------------------------ the selections

def _rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b, i]] for x [B, N, ...] and idx [B, n]: batched row gather (advanced indexing, much faster on the
    CPU than gather with an index expanded over the feature dimension)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], idx]


def _complement(idx: torch.Tensor, N: int) -> torch.Tensor:
    """[B, N - n]: the positions 0 .. N-1 not in idx [B, n] (distinct per row), in increasing order."""
    B = idx.shape[0]
    out = torch.ones(B, N, dtype=torch.bool, device=idx.device)
    out.scatter_(1, idx, False)
    return out.nonzero()[:, 1].view(B, N - idx.shape[1])


def _sorted_keep(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    return score.topk(n_keep, dim=-1).indices.sort(dim=-1).values


def _inv_norms(metric: torch.Tensor) -> torch.Tensor:
    """[B, N]: 1 / max(|row|, 1e-12) of metric [B, N, C] (F.normalize's scale). Cosine similarities are taken as raw
    dot products of the rows scaled by these afterwards, on the small [B, n, m] result, so the metric itself is never
    rewritten (one read pass instead of a normalized copy)."""
    return torch.linalg.vector_norm(metric, dim=-1).clamp_min(1e-12).reciprocal()


def _cosine(a: torch.Tensor, inv_a: torch.Tensor | None, b: torch.Tensor, inv_b: torch.Tensor) -> torch.Tensor:
    """[B, n, m] cosine similarities of rows a [B, n, C] against rows b [B, m, C] given their inverse norms (inv_a
    None: a's rows unscaled, for an argmax over b that a's norms cannot change)."""
    sim = (a @ b.transpose(1, 2)).mul_(inv_b[:, None, :])
    return sim if inv_a is None else sim.mul_(inv_a[:, :, None])


def _target_by_similarity(keep: torch.Tensor, metric: torch.Tensor, inv: torch.Tensor | None = None) -> torch.Tensor:
    """target [B, N]: kept tokens map to themselves, every other token to its most similar kept token (cosine; inv:
    the metric's _inv_norms if already computed). The removed rows are compared with all N rows, [B, r, C] x
    [B, C, N] (the transposed metric is a view, so the kept rows are never gathered), removed columns excluded."""
    B, N = metric.shape[:2]
    n_keep = keep.shape[1]
    own = torch.arange(n_keep, device=keep.device).expand(B, -1)
    target = torch.zeros(B, N, dtype=torch.long, device=keep.device).scatter(1, keep, own)
    if n_keep == N:
        return target
    removed = _complement(keep, N)
    m = metric.float()
    sim = _cosine(_rows(m, removed), None, m, _inv_norms(m) if inv is None else inv)
    sim.scatter_(2, removed[:, None, :].expand(-1, removed.shape[1], -1), -math.inf)
    return target.scatter(1, removed, target.gather(1, sim.argmax(-1)))


def _keep_by_score(score: torch.Tensor, r: int, protected: int) -> torch.Tensor:
    score = score.clone()
    score[:, :protected] = float("inf")
    return _sorted_keep(score, score.shape[1] - r)


def drop_by_score(score: torch.Tensor, r: int, metric: torch.Tensor, protected: int = 1) -> Selection:
    """Keep the N - r tokens of highest score (the protected ones always)."""
    keep = _keep_by_score(score, r, protected)
    return Selection(keep, _target_by_similarity(keep, metric))


def _similarity_keep(importance: torch.Tensor, r: int, metric: torch.Tensor, protected: int,
                     inv: torch.Tensor | None = None, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The S-stage's kept positions [B, N - r] among the N tokens that importance [B, N] ranks; their metric rows are
    metric[b, rows[b]] when rows [B, N] is given (a subset of a larger metric, never gathered on its own), else
    metric itself."""
    N = importance.shape[1]
    order = importance[:, protected:].argsort(dim=-1, descending=True) + protected
    n_a = (N - protected + 1) // 2
    a_idx, b_idx = order[:, :n_a], order[:, n_a:]
    if r > b_idx.shape[1]:
        raise ValueError(f"the S-stage can remove at most {b_idx.shape[1]} of {N} tokens, asked for {r}")
    m = metric.float()
    inv = _inv_norms(m) if inv is None else inv
    a_m, b_m = (a_idx, b_idx) if rows is None else (rows.gather(1, a_idx), rows.gather(1, b_idx))
    best = _cosine(_rows(m, b_m), inv.gather(1, b_m), _rows(m, a_m), inv.gather(1, a_m)).max(-1).values
    drop = b_idx.gather(1, best.topk(r, dim=-1).indices)  # [B, |B|] best match of each B token, then the r best
    return _complement(drop, N)


def similarity_stage(importance: torch.Tensor, r: int, metric: torch.Tensor, protected: int = 1) -> Selection:
    """Zero-TPrune's S-stage: the unprotected tokens sorted by importance are split in two halves, the more important
    (A) and the rest (B); the r tokens of B most similar (cosine on metric) to some token of A are dropped, each
    represented by its most similar kept token. Near-duplicates of important tokens go; unusual tokens stay even
    if they ranked low."""
    keep = _similarity_keep(importance, r, metric, protected)
    return Selection(keep, _target_by_similarity(keep, metric))


def zero_tprune(attn: torch.Tensor, metric: torch.Tensor, r: int, protected: int = 1, iterations: int = 30,
                similarity_fraction: float = 0.5, emphasis: float | None = None) -> Selection:
    """Zero-TPrune for one layer (no padding; see select), given attn [B, N, N], the attention averaged over the heads
    the head filter keeps (head_mean(probs, head_filter(...))): the I-stage ranks tokens by WPR over it and drops
    the r - r_s least important, then the S-stage drops r_s = round(r x similarity_fraction) near-duplicates among
    the rest (the published I -> S order)."""
    B, N, _ = attn.shape
    importance = wpr(attn, None, iterations, protected, emphasis)
    r_s = int(round(r * similarity_fraction))
    while r_s > 0 and r_s > (N - (r - r_s) - protected) // 2:  # the S-stage drops at most half of what is left
        r_s -= 1
    keep = _keep_by_score(importance, r - r_s, protected)
    m = metric.float()
    inv = _inv_norms(m)
    if r_s:
        keep = keep.gather(1, _similarity_keep(importance.gather(1, keep), r_s, m, protected, inv, rows=keep))
    return Selection(keep, _target_by_similarity(keep, m, inv))


def tome(metric: torch.Tensor, r: int, protected: int = 1, matching: str = "bipartite") -> Selection:
    """ToMe's bipartite soft matching (no padding; see select): tokens alternate between sets A (even positions) and
    B (odd); each A token's best match in B by cosine similarity; the r A tokens with the best matches are merged
    into them (merge=True: size-weighted means, merge_tokens). Protected tokens neither merge nor absorb.
    matching="greedy": the sets are not fixed in advance (greedy_matching)."""
    if matching == "greedy":
        return greedy_matching(metric, r, protected)
    if matching != "bipartite":
        raise ValueError(f"matching must be 'bipartite' or 'greedy', got {matching!r}")
    B, N, _ = metric.shape
    m = metric.float()
    inv = _inv_norms(m)
    a_pos = torch.arange(0, N, 2, device=metric.device)
    b_pos = torch.arange(1, N, 2, device=metric.device)
    if r > a_pos.numel() - (protected + 1) // 2:
        raise ValueError(f"ToMe can merge at most {a_pos.numel() - (protected + 1) // 2} of {N} tokens per layer, "
                         f"asked for {r}")
    scores = _cosine(m[:, 0::2], inv[:, 0::2], m[:, 1::2], inv[:, 1::2])  # views: A rows against B rows
    scores[:, a_pos < protected, :] = -math.inf
    scores[:, :, b_pos < protected] = -math.inf
    best, match = scores.max(-1)  # per A token
    src = best.topk(r, dim=-1).indices  # A indices merged away
    keep = _complement(a_pos[src], N)
    # target: kept tokens -> their index in keep; merged A tokens -> the index of their B match
    index_in_keep = torch.full((B, N), -1, dtype=torch.long, device=metric.device)
    index_in_keep.scatter_(1, keep, torch.arange(N - r, device=metric.device).expand(B, -1))
    dst_pos = b_pos[match.gather(1, src)]
    target = index_in_keep.scatter(1, a_pos[src], index_in_keep.gather(1, dst_pos))
    return Selection(keep, target, merge=True)


def greedy_matching(metric: torch.Tensor, r: int, protected: int = 1) -> Selection:
    """ToMe's merge with the pairs chosen greedily instead of across a fixed alternating split (no padding; see
    select): r times, the most similar pair (i, j) by cosine similarity such that i has neither been merged away nor
    absorbed anything and j has not been merged away; i merges into j. The similarities are those of the layer's
    tokens (not recomputed after a merge), a token may absorb several others but never merges on itself once it has
    absorbed one, so every removed token maps straight to a kept one. Protected tokens neither merge nor absorb; at
    most half of the unprotected tokens go (ToMe's cap). Ties go to the lowest (i, j), so of two fresh tokens the
    earlier merges into the later (the merged state is the same either way). On all-MiniLM-L6-v2 sentence
    embeddings it loses less than the alternating split at every FLOP target (benchmarks/README.md): neighbouring
    sub-word tokens of text need not alternate."""
    B, N, _ = metric.shape
    if r > (N - protected) // 2:
        raise ValueError(f"ToMe can merge at most {(N - protected) // 2} of {N} tokens per layer, asked for {r}")
    m = metric.float()
    inv = _inv_norms(m)
    sim = _cosine(m, inv, m, inv)
    sim = sim.add_(sim.transpose(1, 2).clone()).mul_(0.5)  # exactly symmetric: (i, j) and (j, i) tie exactly
    sim.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    sim[:, :protected, :] = -math.inf
    sim[:, :, :protected] = -math.inf
    ar = torch.arange(B, device=metric.device)
    used = torch.zeros(B, N, dtype=torch.bool, device=metric.device)  # merged away or absorbed: no longer a source
    used[:, :protected] = True
    dst_of = torch.arange(N, device=metric.device).expand(B, -1).clone()
    best, match = sim.max(-1)  # each row's best partner among the allowed columns
    for _ in range(r):
        i = best.masked_fill(used, -math.inf).argmax(-1)
        j = match[ar, i]
        dst_of[ar, i] = j
        used[ar, i] = True
        used[ar, j] = True
        sim[ar, :, i] = -math.inf  # i is gone: nobody merges into it
        stale = ((match == i[:, None]) & ~used).nonzero()  # rows still free whose best partner was i
        if stale.numel():
            b, row = stale[:, 0], stale[:, 1]
            best[b, row], match[b, row] = sim[b, row].max(-1)
    keep = _complement(torch.nonzero(dst_of != torch.arange(N, device=metric.device))[:, 1].view(B, r), N)
    index_in_keep = torch.full((B, N), -1, dtype=torch.long, device=metric.device)
    index_in_keep.scatter_(1, keep, torch.arange(N - r, device=metric.device).expand(B, -1))
    return Selection(keep, index_in_keep.gather(1, dst_of), merge=True)


# ------------------------------------------------------------------------------------ padding and the token state

def select(method: Callable[..., Selection], r: int, valid: torch.Tensor | None, protected: int,
           per_token: dict, per_pair: dict | None = None, **kwargs) -> Selection:
    """Run `method(r=..., protected=..., **per_token, **per_pair, **kwargs)` on a padded batch: pads first.

    per_token: tensors [B, N, ...] (metric), per_pair: tensors [B, ..., N, N] (attention). Without pads in the batch the
    method runs batched; otherwise each sequence runs alone on its real tokens with r minus its pads (at least 0),
    its pads are dropped first (represented by its first token, which is protected and real), and the sequences,
    all keeping N - r tokens, are stacked again."""
    per_pair = per_pair or {}
    B, N = next(iter(per_token.values())).shape[:2]
    if r <= 0:
        ar = torch.arange(N, device=next(iter(per_token.values())).device).expand(B, -1)
        return Selection(ar, ar)
    if valid is None or bool(valid.all()):
        return method(r=r, protected=protected, **per_token, **per_pair, **kwargs)
    keeps, targets, merge = [], [], False
    for b in range(B):
        real = valid[b].nonzero().squeeze(1)
        pads = (~valid[b]).nonzero().squeeze(1)
        L, P = real.numel(), pads.numel()
        rb = max(r - P, 0)
        sub_t = {k: v[b:b + 1, real] for k, v in per_token.items()}
        sub_p = {k: v[b:b + 1][..., real, :][..., real] for k, v in per_pair.items()}
        if rb:
            s = method(r=rb, protected=protected, **sub_t, **sub_p, **kwargs)
            merge = merge or s.merge
            keep_real, tgt_real = real[s.keep[0]], s.target[0]
        else:
            keep_real, tgt_real = real, torch.arange(L, device=real.device)
        kept_pads = pads[:P - r] if P > r else pads[:0]
        keep = torch.cat([keep_real, kept_pads]).sort().values
        pos = torch.full((N,), -1, dtype=torch.long, device=real.device)
        pos[keep] = torch.arange(keep.numel(), device=real.device)
        target = torch.empty(N, dtype=torch.long, device=real.device)
        target[real] = pos[keep_real[tgt_real]]
        target[pads] = pos[real[0]]
        target[kept_pads] = pos[kept_pads]
        keeps.append(keep)
        targets.append(target)
    return Selection(torch.stack(keeps), torch.stack(targets), merge)


def merge_tokens(x: torch.Tensor, size: torch.Tensor, sel: Selection) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a selection to hidden states x [B, N, C] and token sizes [B, N] (how many input tokens each stands for;
    0 for pads): returns (x', size'). Kept tokens of a merging selection become the size-weighted mean of everything
    that targets them; of a dropping one they are gathered (their size grows by the sizes they now represent).
    Only the removed tokens are scattered: a kept token's own share is its gathered row."""
    B, N, C = x.shape
    n_keep = sel.keep.shape[1]
    new_size = torch.zeros(B, n_keep, dtype=size.dtype, device=size.device).scatter_add_(1, sel.target, size)
    kept = _rows(x, sel.keep)
    if not sel.merge or n_keep == N:
        return kept, new_size
    removed = _complement(sel.keep, N)
    w_keep = _rows(size, sel.keep).to(x.dtype)[..., None]
    w_gone = _rows(size, removed).to(x.dtype)[..., None]
    rows = (sel.target.gather(1, removed) + torch.arange(B, device=x.device)[:, None] * n_keep).flatten()
    denom = new_size.to(x.dtype)[..., None]
    empty = denom <= 0  # kept pads that nothing merged into (size 0): they keep their own row
    own = kept[empty.expand_as(kept)] if bool(empty.any()) else None
    # in place on the gathered copy (the big [B, n_keep, C] tensor is written once more, not re-allocated twice)
    total = kept.mul_(w_keep).view(B * n_keep, C).index_add_(0, rows, (_rows(x, removed) * w_gone).view(-1, C))
    out = total.view(B, n_keep, C).div_(denom.clamp_min(1e-30))
    if own is not None:
        out[empty.expand_as(out)] = own
    return out, new_size
