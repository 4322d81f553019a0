"""The fused token-pruned attention kernel (slimformer::token_attention) against its float64 reference on every ISA
path: awkward token counts, heads and head dims, with and without a kept-token list, a padding mask, ToMe's size
bias, head weights; bad input is a clear error; opcheck and torch.compile."""
import math

import pytest
import torch

from helpers import rel_err
from slimformer.tokens.attention import attention, attention_reference

op = torch.ops.slimformer.token_attention


def _inputs(B, N, H, D, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    if strided:  # q, k, v as views of one fused projection [B, N, 3, H, D]
        qkv = torch.randn(B, N, 3, H, D, generator=g)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    return tuple(torch.randn(B, N, H, D, generator=g) for _ in range(3))


def _bias(B, N, kind, seed=1):
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed)
    bias = torch.zeros(B, N)
    if kind in ("mask", "both"):
        for b in range(B):  # right padding, every sequence keeps its first token
            n = 1 + int(torch.randint(0, N, (1,), generator=g))
            bias[b, n:] = -math.inf
    if kind in ("size", "both"):
        bias = bias + torch.rand(B, N, generator=g).mul(3).add(1).log()
    return bias


def _check(got, want, need_out, need_probs):
    out, imp, probs = got
    rout, rimp, rprobs = want
    if need_out:
        assert out.shape == rout.shape and rel_err(out, rout) <= 1e-5, rel_err(out, rout)
    else:
        assert out.numel() == 0
    assert imp.shape == rimp.shape
    assert ((imp.double() - rimp).abs() <= 1e-5 * rimp.abs().clamp_min(1)).all(), (imp.double() - rimp).abs().max()
    if need_probs:
        assert probs.shape == rprobs.shape and ((probs.double() - rprobs).abs() <= 1e-6).all()
    else:
        assert probs.numel() == 0


SHAPES = [(N, H, D) for N in (1, 7, 197) for H, D in ((1, 8), (3, 40), (6, 64))] + [(513, 3, 40), (64, 12, 32)]


@pytest.mark.parametrize("N,H,D", SHAPES)
@pytest.mark.parametrize("bias_kind", [None, "mask", "both"])
@pytest.mark.parametrize("with_keep", [False, True])
def test_matches_reference(tokens_isa, N, H, D, bias_kind, with_keep):
    B = 2
    q, k, v = _inputs(B, N, H, D, seed=N + H, strided=(H == 3))
    bias = _bias(B, N, bias_kind)
    keep = None
    if with_keep:
        g = torch.Generator().manual_seed(7)
        n = max(1, (2 * N) // 3)
        keep = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long),
                                       1 + torch.randperm(N - 1, generator=g)[:n - 1].sort().values])
                            for _ in range(B)]) if N > 1 else torch.zeros(B, 1, dtype=torch.long)
    for need_out, need_probs in [(True, False), (True, True), (False, True)]:
        got = attention(q, k, v, bias, keep, None, need_out, need_probs)
        want = attention_reference(q.double(), k.double(), v.double(), None if bias is None else bias.double(), keep,
                                   None, need_out, need_probs)
        _check(got, want, need_out, need_probs)


def test_head_weights_average_the_chosen_heads(tokens_isa):
    q, k, v = _inputs(3, 29, 4, 16)
    w = torch.tensor([[1., 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    _, _, probs = attention(q, k, v, head_weights=w, need_out=False, need_probs=True)
    _, _, want = attention_reference(q.double(), k.double(), v.double(), head_weights=w.double(), need_out=False,
                                     need_probs=True)
    assert (probs.double() - want).abs().max() < 1e-6
    # a pad query gives no importance; its own output is still the attention over the real keys
    bias = torch.zeros(3, 29)
    bias[:, 20:] = -math.inf
    _, imp, _ = attention(q, k, v, bias)
    assert (imp[:, :, 20:] == 0).all()
    assert torch.allclose(imp.sum((1, 2)), torch.full((3,), 4 * 20.0), rtol=1e-5)


def test_bad_input_is_a_clear_error():
    q, k, v = _inputs(2, 5, 2, 8)
    with pytest.raises(RuntimeError, match="float32"):
        op(q.double(), k.double(), v.double(), None, None, None, True, False)
    with pytest.raises(RuntimeError, match="one shape"):
        op(q, k[:, :4], v, None, None, None, True, False)
    with pytest.raises(RuntimeError, match=r"\[batch, tokens, heads, head_dim\]"):
        op(q[0], k[0], v[0], None, None, None, True, False)
    with pytest.raises(RuntimeError, match="key_bias must be float32"):
        op(q, k, v, torch.zeros(2, 4), None, None, True, False)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(RuntimeError, match="finite or -inf"):
            op(q, k, v, torch.zeros(2, 5).index_fill_(1, torch.tensor([2]), bad), None, None, True, False)
    with pytest.raises(RuntimeError, match=r"token indices in \[0, 5\)"):
        op(q, k, v, None, torch.tensor([[0, 5], [0, 1]]), None, True, False)
    with pytest.raises(RuntimeError, match="keep must be int64"):
        op(q, k, v, None, torch.tensor([[0, 1]], dtype=torch.int32).expand(2, 2), None, True, False)
    with pytest.raises(RuntimeError, match="need_probs"):
        op(q, k, v, None, None, torch.ones(2, 2), True, False)
    with pytest.raises(RuntimeError, match="neither"):
        op(q, k, v, None, None, None, False, False)
    with pytest.raises(RuntimeError, match="negative"):
        op(q, k, v, None, None, -torch.ones(2, 2), False, True)


def test_opcheck_and_compile():
    q, k, v = _inputs(2, 9, 2, 8)
    keep = torch.tensor([[0, 2, 3, 8], [0, 1, 5, 6]])
    bias = _bias(2, 9, "both")
    for args in [(q, k, v, None, None, None, True, False), (q, k, v, bias, keep, torch.ones(2, 2), True, True),
                 (q, k, v, bias, None, None, False, True)]:
        torch.library.opcheck(op.default, args)
    fn = torch.compile(lambda q, k, v: attention(q, k, v, need_probs=True), backend="eager", fullgraph=True)
    got = fn(q, k, v)
    want = attention(q, k, v, need_probs=True)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("N,H,D", [(1, 3, 8), (7, 6, 64), (197, 6, 64), (64, 12, 32), (33, 5, 40)])
@pytest.mark.parametrize("bias_kind", [None, "mask", "both"])
@pytest.mark.parametrize("with_keep", [False, True])
@pytest.mark.parametrize("band", [(0.0, 0.75), (0.25, 0.6), (0.0, 1.0)])
def test_head_filtered_pass_matches_reference(tokens_isa, N, H, D, bias_kind, with_keep, band):
    """Zero-TPrune's one-call pass (slimformer::token_attention_head_filtered): out and importance as
    token_attention's, the head weights exactly A.head_filter's on that importance (and the float64 reference's),
    the mean of the kept heads' probabilities; the two-pass fallback off the CPU gives the same."""
    from slimformer.tokens import algorithms as A
    from slimformer.tokens.attention import (_head_filtered_two_pass, attention_head_filtered,
                                             attention_head_filtered_reference)
    B = 3
    q, k, v = _inputs(B, N, H, D, seed=2 * N + H, strided=(H == 5))
    q = q * 2  # peakier rows: the heads' variances spread out
    bias = _bias(B, N, bias_kind)
    keep = None
    if with_keep and N > 1:
        g = torch.Generator().manual_seed(3)
        n = max(1, (3 * N) // 4)
        keep = torch.stack([torch.cat([torch.zeros(1, dtype=torch.long),
                                       1 + torch.randperm(N - 1, generator=g)[:n - 1].sort().values])
                            for _ in range(B)])
    lo, hi = band
    out, imp, probs, w = attention_head_filtered(q, k, v, bias, keep, lo, hi)
    rout, rimp, rprobs, rw = attention_head_filtered_reference(
        q.double(), k.double(), v.double(), None if bias is None else bias.double(), keep, lo, hi)
    n = N if keep is None else keep.shape[1]
    assert out.shape == (B, n, H, D) and imp.shape == (B, H, n) and probs.shape == (B, n, n) and w.shape == (B, H)
    assert rel_err(out, rout) <= 1e-5
    assert ((imp.double() - rimp).abs() <= 1e-5 * rimp.abs().clamp_min(1)).all()
    real = None if bias is None else ~torch.isneginf(bias if keep is None else bias.gather(1, keep))
    assert torch.equal(w, A.head_filter(imp, real, lo, hi))
    assert torch.equal(w.double(), rw)
    assert w.sum(1).min() >= 1
    assert (probs.double() - rprobs).abs().max() <= 1e-6
    two = _head_filtered_two_pass(q, k, v, bias, keep, lo, hi)
    assert torch.equal(two[3], w) and (two[2] - probs).abs().max() <= 1e-6


def test_head_filtered_pass_bad_input_and_opcheck():
    from slimformer.tokens.attention import attention_head_filtered
    filtered = torch.ops.slimformer.token_attention_head_filtered
    q, k, v = _inputs(2, 9, 3, 8)
    with pytest.raises(RuntimeError, match="0 <= low <= high <= 1"):
        filtered(q, k, v, None, None, 0.8, 0.5)
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        attention_head_filtered(q, k, v, low=-0.1)
    with pytest.raises(RuntimeError, match="float32"):
        filtered(q.double(), k.double(), v.double(), None, None, 0.0, 0.75)
    with pytest.raises(RuntimeError, match="key_bias must be float32"):
        filtered(q, k, v, torch.zeros(2, 4), None, 0.0, 0.75)
    q65 = torch.randn(1, 3, 65, 4)
    with pytest.raises(RuntimeError, match="at most 64 heads"):
        filtered(q65, q65, q65, None, None, 0.0, 0.75)
    keep = torch.tensor([[0, 2, 3, 8], [0, 1, 5, 6]])
    for args in [(q, k, v, None, None, 0.0, 0.75), (q, k, v, _bias(2, 9, "both"), keep, 0.25, 0.6)]:
        torch.library.opcheck(filtered.default, args)
    fn = torch.compile(lambda q, k, v: attention_head_filtered(q, k, v), backend="eager", fullgraph=True)
    assert all(torch.equal(a, b) for a, b in zip(fn(q, k, v), attention_head_filtered(q, k, v)))
