"""Token-pruned attention: the fused op (slimformer::token_attention) and its plain-PyTorch reference (the spec).

    out, importance, probs = attention(q, k, v, key_bias=None, keep=None, head_weights=None,
                                       need_out=True, need_probs=False)

q, k, v [B, N, H, D] (the projections' outputs viewed per head, no transpose); key_bias [B, N] added to every score
of a key (-inf masks a pad key, and a pad query gives no importance; ToMe's proportional attention adds
log(size)); keep [B, N'] the tokens that take part, read in place. out [B, N', H, D] (empty unless need_out);
importance [B, H, N'] the attention each token receives from the real queries, per head; probs [B, N', N'] the
head-averaged probabilities when need_probs (heads weighted by head_weights [B, H], normalized; else equally),
else empty. Without need_out, heads of weight 0 are skipped (their importance rows are 0). The kernel never writes
a head's N x N probabilities to memory.

    out, importance, probs, head_weights = attention_head_filtered(q, k, v, key_bias=None, keep=None, low=0.0,
                                                                   high=0.75)

Zero-TPrune's pass: the output and per-head importance as above, Zero-TPrune's head filter on that importance
(algorithms.head_filter over the real tokens, those whose key_bias is not -inf) and probs, the mean of the kept
heads' probabilities; head_weights [B, H] in {0, 1}. On the CPU one call of slimformer::token_attention_head_filtered
(the heads' probabilities stay in the thread's cache until the filter has chosen); elsewhere the fused kernel's
all-heads mean with a statistics-only pass over the dropped heads taken out of it.
"""
from __future__ import annotations

import torch

from .. import ops


def attention_reference(q, k, v, key_bias=None, keep=None, head_weights=None, need_out=True, need_probs=False):
    """The definition, in float64 where the inputs are float64."""
    B, N, H, D = q.shape
    if keep is not None:
        idx = keep[:, :, None, None].expand(-1, -1, H, D)
        q, k, v = q.gather(1, idx), k.gather(1, idx), v.gather(1, idx)
        if key_bias is not None:
            key_bias = key_bias.gather(1, keep)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N', D]
    scores = (qh @ kh.transpose(-1, -2)) * D ** -0.5
    if key_bias is not None:
        scores = scores + key_bias.to(scores.dtype)[:, None, None, :]
    probs = scores.softmax(-1)
    out = (probs @ vh).transpose(1, 2) if need_out else probs.new_empty(0)
    real_q = torch.ones(probs.shape[0], probs.shape[2], dtype=probs.dtype, device=probs.device)
    if key_bias is not None:
        real_q = (~torch.isneginf(key_bias)).to(probs.dtype)
    importance = (probs * real_q[:, None, :, None]).sum(dim=2)
    if not need_probs:
        return out, importance, probs.new_empty(0)
    w = torch.ones(B, H, dtype=probs.dtype, device=probs.device) if head_weights is None else head_weights.to(
        probs.dtype)
    if not need_out:
        importance = importance * (w > 0)[..., None]
    w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
    return out, importance, (probs * w[:, :, None, None]).sum(1)


def _real_tokens(key_bias, keep):
    """[B, N'] bool of the tokens whose key_bias is not -inf (None without a bias: all real)."""
    if key_bias is None:
        return None
    b = key_bias if keep is None else key_bias.gather(1, keep)
    return ~torch.isneginf(b)


def attention_head_filtered_reference(q, k, v, key_bias=None, keep=None, low=0.0, high=0.75):
    """The definition of attention_head_filtered: attention_reference, head_filter, attention_reference again."""
    from .algorithms import head_filter
    out, imp, _ = attention_reference(q, k, v, key_bias, keep)
    w = head_filter(imp, _real_tokens(key_bias, keep), low, high).to(q.dtype)
    probs = attention_reference(q, k, v, key_bias, keep, head_weights=w, need_probs=True)[2]
    return out, imp, probs, w


def attention_head_filtered(q, k, v, key_bias=None, keep=None, low=0.0, high=0.75):
    """Zero-TPrune's attention pass (see the top); the same results as attention_head_filtered_reference."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"the head filter's quantiles must satisfy 0 <= low <= high <= 1, got {low}, {high}")
    if ops.HAS_NATIVE and q.dtype == torch.float32 and q.device.type == "cpu":
        return torch.ops.slimformer.token_attention_head_filtered(q, k, v, key_bias, keep, low, high)
    return _head_filtered_two_pass(q, k, v, key_bias, keep, low, high)


def _head_filtered_two_pass(q, k, v, key_bias, keep, low, high):
    """attention_head_filtered off the CPU op: the all-heads mean, minus a statistics-only pass over the dropped
    heads."""
    from .algorithms import head_filter
    H = q.shape[2]
    out, imp, mean = attention(q, k, v, key_bias, keep, need_probs=True)
    w = head_filter(imp, _real_tokens(key_bias, keep), low, high).to(q.dtype)
    n_drop = H - w.sum(1)
    if bool((n_drop > 0).any()):
        mean_dropped = attention(q, k, v, key_bias, keep, head_weights=1.0 - w, need_out=False, need_probs=True)[2]
        mean = mean.mul_(H).sub_(mean_dropped.mul_(n_drop[:, None, None])).div_((H - n_drop)[:, None, None])
    return out, imp, mean, w


def attention(q, k, v, key_bias=None, keep=None, head_weights=None, need_out=True, need_probs=False):
    """The fused kernel for float32 inputs on a device it is built for; the reference otherwise."""
    if ops.HAS_NATIVE and q.dtype == torch.float32:
        return torch.ops.slimformer.token_attention(q, k, v, key_bias, keep, head_weights, need_out, need_probs)
    return attention_reference(q, k, v, key_bias, keep, head_weights, need_out, need_probs)
