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


def attention(q, k, v, key_bias=None, keep=None, head_weights=None, need_out=True, need_probs=False):
    """The fused kernel for float32 inputs on a device it is built for; the reference otherwise."""
    if ops.HAS_NATIVE and q.dtype == torch.float32:
        return torch.ops.slimformer.token_attention(q, k, v, key_bias, keep, head_weights, need_out, need_probs)
    return attention_reference(q, k, v, key_bias, keep, head_weights, need_out, need_probs)
