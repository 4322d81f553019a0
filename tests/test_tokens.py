"""Token pruning and merging (slimformer.tokens): each algorithm against a plain loop re-implementation of its paper's
equations on small random inputs, the padding and class-token rules, the schedules, and the Hugging Face patching
(exact outputs with nothing pruned, exact restore, output shapes, size-weighted pooling, composition with our
compressed linears)."""
import math

import pytest
import torch
import torch.nn.functional as F

import slimformer
from slimformer.tokens import algorithms as A
from slimformer.tokens import patch as P
from slimformer.tokens import schedule as S


def _probs(B, H, N, valid=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, H, N, N, generator=g, dtype=torch.float64) * 2
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], -math.inf)
    return scores.softmax(-1)


def _metric(B, N, C=12, seed=1):
    return torch.randn(B, N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cos(a, b):
    return float((a @ b) / (a.norm() * b.norm()))


# every method, and ToMe with its greedy matching as one more
VARIANTS = list(P.METHODS) + ["tome-greedy"]


def _cfg(variant, **fields):
    if variant == "tome-greedy":
        return slimformer.TokenPruneConfig(method="tome", matching="greedy", **fields)
    return slimformer.TokenPruneConfig(method=variant, **fields)


# ------------------------------------------------------------------------------------------------ the equations

def test_attention_received_is_the_column_sum_over_real_queries_and_heads():
    B, H, N = 2, 3, 7
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, 5:] = False
    p = _probs(B, H, N, valid)
    got = A.attention_received(p, valid)
    for b in range(B):
        for j in range(N):
            want = sum(float(p[b, h, i, j]) for h in range(H) for i in range(N) if valid[b, i])
            assert abs(got[b, j].item() - want) < 1e-12
    assert (got[1, 5:] == 0).all()


def test_wpr_is_the_power_iteration_of_the_attention_graph():
    B, N = 2, 9
    attn = _probs(B, 1, N).squeeze(1)
    got = A.wpr(attn, None, iterations=4, protected=1, emphasis=3.0)
    for b in range(B):
        s = [3.0] + [1.0] * (N - 1)
        s = [v / sum(s) for v in s]
        for _ in range(4):  # s_j <- sum_i A[i, j] s_i
            s = [sum(float(attn[b, i, j]) * s[i] for i in range(N)) for j in range(N)]
        assert torch.allclose(got[b], torch.tensor(s, dtype=torch.float64), atol=1e-12)
    # many iterations: the stationary distribution, the principal left eigenvector of attn
    far = A.wpr(attn, None, iterations=500)
    for b in range(B):
        w, v = torch.linalg.eig(attn[b].T)
        pi = v[:, w.real.argmax()].real
        pi = pi / pi.sum()
        assert torch.allclose(far[b], pi, atol=1e-9)


def test_wpr_gives_pads_nothing():
    valid = torch.ones(1, 6, dtype=torch.bool)
    valid[0, 4:] = False
    attn = _probs(1, 1, 6, valid).squeeze(1)
    s = A.wpr(attn, valid, iterations=7)
    assert (s[0, 4:] == 0).all() and abs(s.sum().item() - 1) < 1e-12


@pytest.mark.parametrize("N", [1, 7, 17, 130, 197, 300])
def test_wpr_op_matches_the_power_iteration(tokens_isa, N):
    """The CPU op behind A.wpr for float32 (column strips of up to 8 vectors, then the N % L tail columns), against
    the float64 iteration, on a padded buffer narrowed to N columns (strided rows) and with pad rows (s = 0)."""
    B = 3
    buf = torch.zeros(B, N, N + 5)
    buf[..., :N] = _probs(B, 1, N).squeeze(1).float()
    attn = buf[..., :N]
    s0 = torch.rand(B, N, generator=torch.Generator().manual_seed(N))
    s0[1, N // 2:] = 0
    saved = s0.clone()
    for it in (0, 1, 30):
        want = s0.double()
        for _ in range(it):
            want = torch.bmm(want.unsqueeze(1), attn.double()).squeeze(1)
        got = torch.ops.slimformer.wpr(attn, s0, it)
        assert got.dtype == torch.float32 and got.shape == (B, N)
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-7), it
    assert torch.equal(s0, saved)  # the start is not written
    # A.wpr takes the op for float32 on the CPU
    s = A.wpr(attn, None, iterations=30)
    ref = A.wpr(attn.double(), None, iterations=30)
    assert torch.allclose(s.double(), ref, rtol=1e-5, atol=1e-7)


def test_wpr_op_bad_input_and_opcheck():
    attn, s = torch.softmax(torch.randn(2, 5, 5), -1), torch.rand(2, 5)
    with pytest.raises(RuntimeError, match=r"attn must be \[B, N, N\]"):
        torch.ops.slimformer.wpr(attn[:, :4], s, 3)
    with pytest.raises(RuntimeError, match=r"s must be \[B, N\]"):
        torch.ops.slimformer.wpr(attn, s[:, :4], 3)
    with pytest.raises(RuntimeError, match="must be float32"):
        torch.ops.slimformer.wpr(attn.double(), s.double(), 3)
    with pytest.raises(RuntimeError, match="iterations must be >= 0"):
        torch.ops.slimformer.wpr(attn, s, -1)
    torch.library.opcheck(torch.ops.slimformer.wpr.default, (attn, s, 4))


def test_head_filter_keeps_the_heads_in_the_variance_band():
    B, H, N = 2, 8, 10
    p = _probs(B, H, N)
    w = A.head_filter(A.received_per_head(p), None, low=0.25, high=0.75)
    for b in range(B):
        recv = [[sum(float(p[b, h, i, j]) for i in range(N)) for j in range(N)] for h in range(H)]
        var = torch.tensor([torch.tensor(r).var(unbiased=False).item() for r in recv])
        lo, hi = torch.quantile(var, 0.25).item(), torch.quantile(var, 0.75).item()
        want = [(lo - 1e-15 <= v <= hi + 1e-15) for v in var.tolist()]
        assert w[b].bool().tolist() == want
    m = A.head_mean(p, w)
    assert torch.allclose(m[0], sum(p[0, h] for h in range(H) if w[0, h]) / w[0].sum())


def test_similarity_stage_drops_the_less_important_tokens_most_like_the_important_half():
    B, N, r = 2, 11, 3
    imp = torch.rand(B, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    met = _metric(B, N)
    sel = A.similarity_stage(imp, r, met, protected=1)
    for b in range(B):
        order = sorted(range(1, N), key=lambda i: -imp[b, i].item())
        a, rest = order[:(N - 1 + 1) // 2], order[(N - 1 + 1) // 2:]
        best = {j: max(_cos(met[b, j], met[b, i]) for i in a) for j in rest}
        dropped = sorted(rest, key=lambda j: -best[j])[:r]
        assert sel.keep[b].tolist() == [i for i in range(N) if i not in dropped]
        for j in dropped:  # represented by its most similar kept token
            sims = {k: _cos(met[b, j], met[b, k]) for k in sel.keep[b].tolist()}
            assert sel.keep[b, sel.target[b, j]].item() == max(sims, key=sims.get)


def test_zero_tprune_is_the_i_stage_then_the_s_stage():
    B, H, N, r = 2, 4, 13, 5
    p, met = _probs(B, H, N), _metric(B, N)
    attn = A.head_mean(p, A.head_filter(A.received_per_head(p), None, 0.0, 1.0))
    sel = A.zero_tprune(attn, met, r, protected=1, iterations=6, similarity_fraction=0.4)
    r_s = round(r * 0.4)
    for b in range(B):
        imp = A.wpr(p[b:b + 1].mean(1), None, 6, 1)[0]  # all heads pass the (0, 1) band
        order = sorted(range(1, N), key=lambda i: imp[i].item())
        after_i = [i for i in range(N) if i not in order[:r - r_s]]
        cand = sorted(after_i[1:], key=lambda i: -imp[i].item())
        a, rest = cand[:(len(cand) + 1) // 2], cand[(len(cand) + 1) // 2:]
        best = {j: max(_cos(met[b, j], met[b, i]) for i in a) for j in rest}
        dropped = sorted(rest, key=lambda j: -best[j])[:r_s]
        assert sel.keep[b].tolist() == [i for i in after_i if i not in dropped]
        assert sel.keep[b, 0] == 0


@pytest.mark.parametrize("N,r", [(9, 7), (12, 10), (5, 3)])
def test_zero_tprune_takes_any_r_the_schedule_allows(N, r):
    # the S-stage can drop at most half of what the I-stage leaves: the split moves to the I-stage
    p, met = _probs(2, 2, N), _metric(2, N)
    sel = A.zero_tprune(A.head_mean(p), met, r, protected=1, iterations=3, similarity_fraction=0.5)
    assert sel.keep.shape == (2, N - r) and (sel.keep[:, 0] == 0).all()


def test_tome_bipartite_soft_matching_and_size_weighted_merge():
    B, N, C, r = 2, 12, 6, 4
    met = _metric(B, N, C)
    x = torch.randn(B, N, C, dtype=torch.float64)
    size = torch.rand(B, N, dtype=torch.float64) + 0.5
    sel = A.tome(met, r, protected=1)
    x2, size2 = A.merge_tokens(x, size, sel)
    for b in range(B):
        a_set, b_set = list(range(0, N, 2)), list(range(1, N, 2))
        best = {}
        for i in a_set:
            if i == 0:  # the class token neither merges nor absorbs
                continue
            sims = {j: _cos(met[b, i], met[b, j]) for j in b_set}
            j = max(sims, key=sims.get)
            best[i] = (sims[j], j)
        src = sorted(best, key=lambda i: -best[i][0])[:r]
        kept = [i for i in range(N) if i not in src]
        assert sel.keep[b].tolist() == kept
        for k, t in enumerate(kept):
            group = [t] + [i for i in src if best[i][1] == t]
            w = sum(size[b, i] for i in group)
            want = sum(size[b, i] * x[b, i] for i in group) / w
            assert torch.allclose(x2[b, k], want) and torch.isclose(size2[b, k], w)
        for i in src:
            assert kept[sel.target[b, i]] == best[i][1]


@pytest.mark.parametrize("N,r,protected", [(12, 5, 1), (9, 4, 1), (30, 14, 2), (7, 3, 1)])
def test_tome_greedy_matching_is_the_most_similar_pairs_first(N, r, protected):
    """matching="greedy": r times the most similar pair (i, j), i neither merged away nor a destination, j not merged
    away (lowest (i, j) on a tie), i into j; then the size-weighted merge. A plain loop over the pairs in float64."""
    B, C = 3, 5
    met = _metric(B, N, C, seed=N + r)
    x = torch.randn(B, N, C, dtype=torch.float64)
    size = torch.rand(B, N, dtype=torch.float64) + 0.5
    sel = A.tome(met, r, protected=protected, matching="greedy")
    x2, size2 = A.merge_tokens(x, size, sel)
    for b in range(B):
        src, dst, into = set(), set(), {}
        for _ in range(r):
            best = None
            for i in range(protected, N):
                if i in src or i in dst:
                    continue
                for j in range(protected, N):
                    if j != i and j not in src:
                        s = _cos(met[b, min(i, j)], met[b, max(i, j)])  # one value for (i, j) and (j, i)
                        if best is None or s > best[0]:
                            best = (s, i, j)
            _, i, j = best
            src.add(i)
            dst.add(j)
            into[i] = j
        kept = [t for t in range(N) if t not in src]
        assert sel.keep[b].tolist() == kept
        for k, t in enumerate(kept):
            group = [t] + [i for i in src if into[i] == t]
            w = sum(size[b, i] for i in group)
            assert torch.allclose(x2[b, k], sum(size[b, i] * x[b, i] for i in group) / w)
            assert torch.isclose(size2[b, k], w)
        assert all(kept[sel.target[b, i]] == into[i] for i in src)
    with pytest.raises(ValueError, match="at most"):
        A.tome(met, (N - protected) // 2 + 1, protected=protected, matching="greedy")


def test_dropping_gathers_and_hands_the_sizes_to_the_representatives():
    met = _metric(1, 8)
    x = torch.randn(1, 8, 5, dtype=torch.float64)
    sel = A.drop_by_score(torch.arange(8.0).flip(0)[None], 3, met, protected=1)
    assert sel.keep.tolist() == [[0, 1, 2, 3, 4]]
    x2, s2 = A.merge_tokens(x, torch.ones(1, 8, dtype=torch.float64), sel)
    assert torch.equal(x2, x[:, :5]) and s2.sum() == 8


# ------------------------------------------------------------------------------ padding and the class token

@pytest.mark.parametrize("method", VARIANTS)
@pytest.mark.parametrize("r", [1, 3, 5])  # ToMe merges at most half the unprotected tokens: (12 - 1) // 2
def test_pads_go_first_and_the_class_token_stays(method, r):
    B, H, N = 4, 3, 12
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[1, 10:] = False  # 2 pads
    valid[2, 5:] = False   # 7 pads
    valid[3, 1:] = False   # only the class token is real
    p = _probs(B, H, N, valid)
    metric = torch.randn(B, N, 8, dtype=torch.float64)
    cfg = _cfg(method, r=r, iterations=5)
    stats = {"importance": A.received_per_head(p, valid), "cls": p[:, :, 0].sum(1),
             "attn": A.head_mean(p, A.head_filter(A.received_per_head(p, valid), valid))}
    sel = P._select(cfg, 0, r, stats, metric, valid, 1, torch.Generator().manual_seed(0))
    assert sel.keep.shape == (B, N - r)
    for b in range(B):
        kept = set(sel.keep[b].tolist())
        assert 0 in kept
        pads = [i for i in range(N) if not valid[b, i]]
        real_removed = [i for i in range(N) if valid[b, i] and i not in kept]
        pads_kept = [i for i in pads if i in kept]
        assert not (real_removed and pads_kept), (b, real_removed, pads_kept)
        assert len(real_removed) == max(0, r - len(pads))
        reps = sel.keep[b, sel.target[b]]
        assert valid[b, reps[valid[b]]].all()  # no real token is represented by a pad


def test_select_without_pads_equals_the_batched_method():
    B, N = 3, 10
    met = _metric(B, N)
    valid = torch.ones(B, N, dtype=torch.bool)
    a = A.select(A.tome, 3, valid, 1, {"metric": met})
    b = A.tome(met, 3, 1)
    assert torch.equal(a.keep, b.keep) and torch.equal(a.target, b.target)


# -------------------------------------------------------------------------------------------------- schedules

def test_flops_model_and_solver():
    shape = S.Shape(layers=12, hidden=384, ffn=1536, tokens=197)
    n, total = 197, 0
    for _ in range(12):
        total += 4 * n * 384 ** 2 + 2 * n * n * 384 + 2 * (n - 9) * 384 * 1536
        n -= 9
    assert S.flops(shape, [9] * 12) == total
    removed, frac = S.from_flops(shape, 0.653)
    assert len(set(removed)) == 1 and abs(frac - 0.653) < 0.02
    assert frac == S.flops_fraction(shape, removed)
    for r in range(0, 17):  # no constant r is closer
        assert abs(S.flops_fraction(shape, S.from_r(shape, r)) - 0.653) >= abs(frac - 0.653) - 1e-12
    assert S.from_keep(S.Shape(3, 8, 16, 100), [0.5, 0.5]) == [50, 25, 0]
    assert S.from_r(S.Shape(3, 8, 16, 5), 3) == [3, 0, 0]  # never below the class token + 1
    assert S.from_r(S.Shape(3, 8, 16, 12), 6, bipartite=True) == [5, 3, 1]  # ToMe: half the unprotected
    with pytest.raises(ValueError, match="fraction"):
        S.from_flops(shape, 1.5)
    # every 3rd layer from layer 1: one constant r at layers 1, 4, 7, 10 and nothing elsewhere, the closest such r
    removed, frac = S.from_flops(shape, 0.653, first_layer=1, every=3)
    r = removed[1]
    assert removed == [0, r, 0, 0, r, 0, 0, r, 0, 0, r, 0] and frac == S.flops_fraction(shape, removed)
    for other in (r - 1, r + 1):
        alt = [other if (l - 1) % 3 == 0 and l >= 1 else 0 for l in range(12)]
        assert abs(S.flops_fraction(shape, alt) - 0.653) >= abs(frac - 0.653)
    with pytest.raises(ValueError, match="every"):
        S.from_flops(shape, 0.653, every=0)
    with pytest.raises(ValueError, match="exactly one"):
        slimformer.TokenPruneConfig(r=3, flops=0.6)
    with pytest.raises(ValueError, match="method"):
        slimformer.TokenPruneConfig(method="magic", r=3)
    for bad, what in [(dict(flops=0.0), "flops"), (dict(keep=[1.0, 1.2]), "keep"), (dict(r=-1), "r is"),
                      (dict(r=[2, 1.5]), "r is"), (dict(r=2, protected=0), "protected"),
                      (dict(r=2, similarity="values"), "similarity"), (dict(flops=0.6, every=0), "every"),
                      (dict(flops=0.6, first_layer=-1), "first_layer"), (dict(r=2, every=2), "FLOP target"),
                      (dict(keep=[0.9], first_layer=1), "FLOP target")]:
        with pytest.raises(ValueError, match=what):
            slimformer.TokenPruneConfig(**bad)


# ------------------------------------------------------------------------------------------------ HF models

def _bert():
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    return BertModel(BertConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                                vocab_size=100)).eval()


def _vit():
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                              image_size=32, patch_size=8)).eval()


def _text_batch():
    ids = torch.randint(0, 100, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 8:] = 0
    return ids, mask


@pytest.mark.parametrize("method", VARIANTS)
@pytest.mark.parametrize("similarity", ["keys", "hidden"])
def test_bert_unpruned_exact_and_restore(method, similarity):
    m = _bert()
    ids, mask = _text_batch()
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state
        slimformer.prune_tokens(m, _cfg(method, r=0))
        same = m(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (same - ref)[mask.bool()].abs().max() < 1e-5
        slimformer.prune_tokens(m, _cfg(method, r=3, similarity=similarity))
        out = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert out.last_hidden_state.shape == ref.shape and len(out.hidden_states) == 5
        assert all(h.shape == ref.shape for h in out.hidden_states)
        assert torch.isfinite(out.last_hidden_state).all()
        rep = slimformer.token_pruning_report(m)
        assert rep["removed"] == [3, 3, 3, 3] and rep["tokens_out"] == 8
        slimformer.unprune_tokens(m)
        assert torch.equal(m(input_ids=ids, attention_mask=mask).last_hidden_state, ref)


@pytest.mark.parametrize("method", P.METHODS)
def test_vit_unpruned_exact_and_flops_target(method):
    v = _vit()
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = v(pixel_values=px).last_hidden_state
        slimformer.prune_tokens(v, slimformer.TokenPruneConfig(method=method, r=0))
        assert (v(pixel_values=px).last_hidden_state - ref).abs().max() < 1e-5
        slimformer.prune_tokens(v, slimformer.TokenPruneConfig(method=method, flops=0.65))
        y = v(pixel_values=px).last_hidden_state
        assert y.shape == ref.shape
        assert abs(slimformer.token_pruning_report(v)["flops_fraction"] - 0.65) < 0.05
        slimformer.prune_tokens(v, slimformer.TokenPruneConfig(method=method, flops=0.65, every=2))
        assert v(pixel_values=px).last_hidden_state.shape == ref.shape
        rep = slimformer.token_pruning_report(v)
        assert rep["removed"][1::2] == [0] * (len(rep["removed"]) // 2) and rep["removed"][0] > 0
        assert abs(rep["flops_fraction"] - 0.65) < 0.08
        slimformer.unprune_tokens(v)
        assert torch.equal(v(pixel_values=px).last_hidden_state, ref)


@pytest.mark.parametrize("method", P.METHODS)
def test_expanded_outputs_give_size_weighted_pooling(method):
    # a user's mean pooling over the expanded output with the original mask equals pooling the compact final
    # states weighted by how many real input tokens each stands for
    m = _bert()
    ids, mask = _text_batch()
    fam = P._family(m)
    cfg = slimformer.TokenPruneConfig(method=method, r=3)
    with torch.no_grad():
        x = m.embeddings(input_ids=ids)
        record = {}
        full, compact, _ = P._run_encoder(fam, cfg, x, mask.bool(), 1, False, record)
    pooled = (full * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    # rebuild the sizes: count the real tokens each compact token stands for
    slimformer.prune_tokens(m, cfg)
    for b in range(3):
        states = {tuple(full[b, t].tolist()) for t in range(20) if mask[b, t]}
        assert len(states) <= compact.shape[1]
        want = sum(full[b, t] for t in range(20) if mask[b, t]) / mask[b].sum()
        assert torch.allclose(pooled[b], want)
        for s in states:  # every expanded state is one of the compact states
            assert any(torch.allclose(torch.tensor(s), compact[b, j]) for j in range(compact.shape[1]))


def test_pruning_composes_with_compressed_linears():
    m = _bert()
    ids, mask = _text_batch()
    for layer in m.encoder.layer:
        layer.intermediate.dense = slimformer.Sparse24Linear.from_linear(layer.intermediate.dense)
        layer.output.dense = slimformer.QuantLinear.from_linear(layer.output.dense, bits=4, group_size=32)
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method="tome", r=0))
        assert (m(input_ids=ids, attention_mask=mask).last_hidden_state - ref)[mask.bool()].abs().max() < 1e-4
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method="zero-tprune", r=2))
        assert torch.isfinite(m(input_ids=ids, attention_mask=mask).last_hidden_state).all()


def test_bad_input_is_a_clear_error():
    m = _bert()
    with pytest.raises(ValueError, match="no supported encoder"):
        slimformer.prune_tokens(torch.nn.Linear(3, 3), slimformer.TokenPruneConfig(r=1))
    slimformer.prune_tokens(m, slimformer.TokenPruneConfig(r=1))
    ids = torch.randint(0, 100, (2, 6))
    left_padded = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="first token"):
        m(input_ids=ids, attention_mask=left_padded)
    with pytest.raises(ValueError, match="attention maps"):
        m(input_ids=ids, output_attentions=True)
    with pytest.raises(ValueError, match="no token pruning"):
        slimformer.token_pruning_report(_bert())
    with pytest.raises(ValueError, match="matching must be"):
        slimformer.TokenPruneConfig(method="tome", r=1, matching="optimal")
    with pytest.raises(ValueError, match="how ToMe pairs"):
        slimformer.TokenPruneConfig(method="zero-tprune", r=1, matching="greedy")


@pytest.mark.parametrize("padded", [False, True])
def test_layer_statistics_from_the_kernel_equal_the_definitions(padded):
    # what the patched layer hands the selection (per-head received attention, the class token's row, the mean of
    # the heads Zero-TPrune's filter keeps, from the one-call head-filtered pass) against eager probabilities
    B, N, H, D = 3, 17, 6, 8
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, N, H, D, generator=g) for _ in range(3))
    valid = torch.ones(B, N, dtype=torch.bool)
    if padded:
        valid[1, 12:] = False
    st = P._State(valid if padded else None, valid.float(), torch.arange(N).expand(B, -1))
    probs = (torch.einsum("bihd,bjhd->bhij", q, k) * D ** -0.5).masked_fill(~valid[:, None, None, :], -math.inf)
    probs = probs.softmax(-1)
    cfg = slimformer.TokenPruneConfig(method="zero-tprune", r=2, head_quantiles=(0.1, 0.7))
    out, stats = P._layer_attention(cfg, q, k, v, st, True)
    w = A.head_filter(A.received_per_head(probs, valid), valid, 0.1, 0.7)
    assert torch.allclose(stats["attn"], A.head_mean(probs, w), atol=1e-6)
    assert torch.allclose(out, torch.einsum("bhij,bjhd->bihd", probs, v), atol=1e-5)
    cfg = slimformer.TokenPruneConfig(method="attention", r=2, attention_from="cls")
    _, stats = P._layer_attention(cfg, q, k, v, st, True)
    assert torch.allclose(stats["importance"], A.received_per_head(probs, valid), atol=1e-5)
    assert torch.allclose(stats["cls"], A.cls_attention(probs), atol=1e-6)


def test_deit_keeps_its_class_and_distillation_tokens():
    from transformers import DeiTConfig, DeiTModel
    torch.manual_seed(0)
    m = DeiTModel(DeiTConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                             image_size=32, patch_size=8), add_pooling_layer=False).eval()
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # some transformers releases leave both tokens and the position embeddings at zero, which would make the two
        # tokens identical whatever the pruning does: give them values of their own
        for p in (m.embeddings.cls_token, m.embeddings.distillation_token, m.embeddings.position_embeddings):
            p.normal_(0, 0.02)
        ref = m(pixel_values=px).last_hidden_state
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method="zero-tprune", r=0))
        assert (m(pixel_values=px).last_hidden_state - ref).abs().max() < 1e-5
        assert m._slimformer_tokens["protected"] == 2
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method="attention", r=5))
        y = m(pixel_values=px).last_hidden_state
    # the class and distillation tokens are never removed: each keeps a final state of its own
    assert y.shape == ref.shape and not torch.equal(y[:, 0], y[:, 1])


@pytest.mark.parametrize("method", P.METHODS)
def test_bf16_models_prune_too(method):
    m = _bert().to(torch.bfloat16)
    ids, mask = _text_batch()
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method=method, r=0))
        same = m(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (same.float() - ref.float())[mask.bool()].abs().max() < 0.1
        slimformer.prune_tokens(m, slimformer.TokenPruneConfig(method=method, r=3))
        y = m(input_ids=ids, attention_mask=mask).last_hidden_state
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape and torch.isfinite(y).all()
