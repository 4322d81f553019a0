"""Token pruning inside Hugging Face encoders: BERT-family text encoders (MiniLM) and ViT / DeiT.

prune_tokens(model, config) replaces the forward of every base encoder model inside `model` (BertModel, ViTModel,
DeiTModel, ...; found by structure) with slimformer's own layer loop, which calls the model's own submodules (so
QuantLinear / Sparse24Linear layers inside keep working) and, after each layer's attention, removes or merges tokens
as the schedule says before that layer's feed-forward part. The outputs keep the input's shape: each position of
last_hidden_state (and of every hidden_states entry) carries the state of the token that stands for it.
unprune_tokens(model) restores the original forwards.
"""
from __future__ import annotations

import math
import time
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from . import algorithms as A
from . import schedule as S
from .attention import attention, attention_head_filtered

METHODS = ("zero-tprune", "tome", "attention", "random")


@dataclass
class TokenPruneConfig:
    """What to prune and how much.

    method: "zero-tprune" (WPR importance + similarity, drops), "tome" (bipartite merging with proportional
    attention), "attention" (drop the tokens that receive the least attention; attention_from="cls" ranks by the
    class token's row instead, EViT's rule), "random".
    Exactly one of: r (tokens removed per layer, an int or a list per layer), keep (per-layer fraction of the
    entering tokens that survive the layer), flops (fraction of the unpruned encoder's multiply-adds to keep; solved
    for a constant r removed at `first_layer` and every `every`-th layer after it (every=1: all of them; 3: a few
    larger cuts, cheaper for methods whose choice costs much per layer); the achieved fraction is in
    token_pruning_report(model)["flops_fraction"]).
    protected: leading tokens never removed (default: 1, or 2 for DeiT's distillation token).
    iterations: WPR iterations per layer (an int, or a list indexed by layer; the last entry repeats).
    similarity_fraction: share of each layer's removals made by Zero-TPrune's S-stage.
    head_quantiles: the variance band of Zero-TPrune's head filter (A.head_filter).
    similarity: what ToMe's matching, Zero-TPrune's S-stage and the choice of a dropped token's representative
    compare: "keys" (the layer's keys, heads concatenated: the papers' choice) or "hidden" (the hidden states at the
    pruning point, i.e. exactly what a merge averages; on all-MiniLM-L6-v2 sentence embeddings it is the better one,
    benchmarks/README.md).
    matching: how ToMe pairs the tokens it merges: "bipartite" (the paper's alternating split) or "greedy" (the most
    similar pairs first, A.greedy_matching; better on all-MiniLM-L6-v2 sentence embeddings, benchmarks/README.md).
    """
    method: str = "zero-tprune"
    r: int | list[int] | None = None
    keep: list[float] | None = None
    flops: float | None = None
    first_layer: int = 0
    every: int = 1
    protected: int | None = None
    iterations: int | list[int] = 30
    similarity_fraction: float = 0.5
    head_quantiles: tuple[float, float] = (0.0, 0.75)
    attention_from: str = "all"
    similarity: str = "keys"
    matching: str = "bipartite"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        given = [n for n in ("r", "keep", "flops") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of r, keep, flops; got {given or 'none'}")
        if self.flops is not None and not 0.0 < self.flops <= 1.0:
            raise ValueError(f"flops is the fraction of the unpruned FLOPs to keep, in (0, 1], got {self.flops}")
        if self.keep is not None and not all(0.0 < k <= 1.0 for k in self.keep):
            raise ValueError(f"keep holds per-layer fractions of tokens kept, each in (0, 1], got {self.keep}")
        rs = [self.r] if isinstance(self.r, int) else (self.r or [])
        if any(not isinstance(v, int) or v < 0 for v in rs):
            raise ValueError(f"r is the number of tokens each layer removes (a non-negative int or a list), got "
                             f"{self.r}")
        if not isinstance(self.every, int) or self.every < 1 or not isinstance(self.first_layer, int) or \
                self.first_layer < 0:
            raise ValueError(f"first_layer must be an int >= 0 and every an int >= 1, got {self.first_layer!r} and "
                             f"{self.every!r}")
        if self.flops is None and (self.every != 1 or self.first_layer != 0):
            raise ValueError("first_layer and every shape the schedule solved for a FLOP target (flops=...); with r or "
                             "keep, give the removals per layer as a list instead")
        if self.protected is not None and self.protected < 1:
            raise ValueError(f"protected must be at least 1 (the class token is never removed), got {self.protected}")
        if self.similarity not in ("keys", "hidden"):
            raise ValueError(f"similarity must be 'keys' or 'hidden', got {self.similarity!r}")
        if self.matching not in ("bipartite", "greedy"):
            raise ValueError(f"matching must be 'bipartite' or 'greedy', got {self.matching!r}")
        if self.matching != "bipartite" and self.method != "tome":
            raise ValueError(f"matching chooses how ToMe pairs the tokens it merges; method is {self.method!r}")
        if self.attention_from not in ("all", "cls"):
            raise ValueError(f"attention_from must be 'all' or 'cls', got {self.attention_from!r}")
        if not 0.0 <= self.similarity_fraction <= 1.0:
            raise ValueError(f"similarity_fraction must be in [0, 1], got {self.similarity_fraction}")


# ------------------------------------------------------------------------------------------- model families

class _Family:
    """How one encoder family runs a layer: q/k/v, the attention output with its residual, the feed-forward."""

    def __init__(self, base, layers):
        cfg = base.config
        self.heads = cfg.num_attention_heads
        self.hidden = cfg.hidden_size
        self.ffn = cfg.intermediate_size
        self.layers = list(layers)


class _Bert(_Family):
    """Post-norm BERT layers (BertModel and its relatives, MiniLM): x -> LN(x + attn) -> LN(. + FFN)."""

    @staticmethod
    def layers_of(m):
        enc = getattr(m, "encoder", None)
        layers = getattr(enc, "layer", None)
        if hasattr(m, "embeddings") and layers is not None and len(layers) and \
                hasattr(getattr(layers[0].attention, "self", None), "query"):
            return layers
        return None

    def qkv(self, layer):
        sa = layer.attention.self
        return sa.query, sa.key, sa.value

    def pre_attention(self, layer, x):
        return x

    def after_attention(self, layer, o, x):
        out = layer.attention.output
        return out.LayerNorm(out.dropout(out.dense(o)) + x)

    def feed_forward(self, layer, x):
        return layer.output(layer.intermediate(x), x)


class _ViT(_Family):
    """Pre-norm ViT / DeiT layers: x -> x + attn(LN(x)) -> . + MLP(LN(.))."""

    @staticmethod
    def layers_of(m):
        layers = getattr(m, "layers", None)
        if hasattr(m, "embeddings") and layers is not None and len(layers) and \
                hasattr(layers[0], "layernorm_before") and hasattr(layers[0].attention, "q_proj"):
            return layers
        return None

    def qkv(self, layer):
        a = layer.attention
        return a.q_proj, a.k_proj, a.v_proj

    def pre_attention(self, layer, x):
        return layer.layernorm_before(x)

    def after_attention(self, layer, o, x):
        return x + layer.dropout(layer.attention.o_proj(o))

    def feed_forward(self, layer, x):
        return x + layer.dropout(layer.mlp(layer.layernorm_after(x)))


def _family(m):
    for fam in (_Bert, _ViT):
        layers = fam.layers_of(m)
        if layers is not None:
            return fam(m, layers)
    return None


# ----------------------------------------------------------------------------------------------- the layer loop

@dataclass
class _State:
    valid: torch.Tensor | None  # [B, N] real tokens (None: all)
    size: torch.Tensor          # [B, N] input tokens each current token stands for (0 for pads)
    source: torch.Tensor        # [B, T] current index of each input token


def _key_bias(valid, size, tome):
    """[B, N] additive key bias: -inf for pads, + log(size) for ToMe's proportional attention; None if neither."""
    bias = None
    if tome:
        bias = size.clamp_min(0).log()  # pads have size 0: -inf
    elif valid is not None and not bool(valid.all()):
        bias = torch.zeros(valid.shape, dtype=size.dtype, device=size.device).masked_fill(~valid, -math.inf)
    return bias


def _sdpa(q, k, v, key_bias):
    """Attention alone (no statistics) through torch's SDPA, for dtypes the fused kernel does not take."""
    B, N, H, D = q.shape
    mask = None if key_bias is None else key_bias[:, None, None, :].to(q.dtype)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _layer_param(value, layer):
    if isinstance(value, (list, tuple)):
        return value[min(layer, len(value) - 1)]
    return value


def _select(cfg: TokenPruneConfig, li: int, r: int, stats: dict, metric, valid, protected,
            generator) -> A.Selection:
    """One layer's selection. stats: "importance" [B, H, N] (attention received per head, from the kernel),
    "cls" [B, N] (the class token's attention, summed over heads) or "attn" [B, N, N] (the head-filtered mean),
    whichever the method needs; metric [B, N, C]: what similarity compares."""
    def by_score(r, protected, metric, score):
        return A.drop_by_score(score, r, metric, protected)

    if cfg.method == "tome":
        return A.select(A.tome, r, valid, protected, {"metric": metric}, matching=cfg.matching)
    if cfg.method == "random":
        score = torch.rand(metric.shape[0], metric.shape[1], generator=generator).to(metric.device)
        return A.select(by_score, r, valid, protected, {"metric": metric, "score": score})
    if cfg.method == "attention":
        score = stats["cls"] if cfg.attention_from == "cls" else stats["importance"].sum(1)
        return A.select(by_score, r, valid, protected, {"metric": metric, "score": score})
    return A.select(A.zero_tprune, r, valid, protected, {"metric": metric}, {"attn": stats["attn"]},
                    iterations=_layer_param(cfg.iterations, li), similarity_fraction=cfg.similarity_fraction)


def _layer_attention(cfg: TokenPruneConfig, q, k, v, st, prune: bool, clock: list | None = None):
    """The layer's attention output [B, N, H, D] and what its selection needs (see _select). clock[0] gains the
    seconds spent on statistics beyond the fused pass (the class token's row). Zero-TPrune's head filter and the
    mean of the kept heads come out of the pass itself (attention_head_filtered; what that costs over the plain pass
    is in the attention table of benchmarks/bench_tokens.py), so they are not on the clock."""
    bias = _key_bias(st.valid, st.size, cfg.method == "tome")
    stats = {}
    if not (prune and cfg.method in ("attention", "zero-tprune")):
        # output only: the fused kernel where it runs (faster than SDPA at N=197, benchmarks/README.md), else SDPA
        fused = q.dtype == torch.float32 and ops.HAS_NATIVE
        return (attention(q, k, v, bias)[0] if fused else _sdpa(q, k, v, bias)), stats
    if q.dtype != torch.float32:  # the statistics in fp32 (the fused kernel's dtype); the output back in q's
        out, stats = _layer_attention(cfg, q.float(), k.float(), v.float(), st, prune, clock)
        return out.to(q.dtype), stats
    if cfg.method == "attention":
        out, imp, _ = attention(q, k, v, bias)
        stats["importance"] = imp
        t0 = time.perf_counter()
        if cfg.attention_from == "cls":
            B, N, H, D = q.shape
            s = torch.einsum("bhd,bnhd->bhn", q[:, 0], k) * D ** -0.5
            if bias is not None:
                s = s + bias[:, None, :]
            stats["cls"] = s.softmax(-1).sum(1)
        if clock is not None:
            clock[0] += time.perf_counter() - t0
        return out, stats
    # Zero-TPrune: the output, per-head received attention and the mean over the heads the filter keeps
    lo, hi = cfg.head_quantiles
    if lo > 0.0 or hi < 1.0:
        out, imp, mean, _ = attention_head_filtered(q, k, v, bias, low=lo, high=hi)
    else:
        out, imp, mean = attention(q, k, v, bias, need_probs=True)
    stats["attn"] = mean
    return out, stats


def _run_encoder(fam: _Family, cfg: TokenPruneConfig, x: torch.Tensor, valid: torch.Tensor | None,
                 protected: int, want_hidden: bool, record):
    B, T, _ = x.shape
    shape = S.Shape(len(fam.layers), fam.hidden, fam.ffn, T, protected)
    bip = cfg.method == "tome"
    if cfg.r is not None:
        removed = S.from_r(shape, cfg.r, bip)
    elif cfg.keep is not None:
        removed = S.from_keep(shape, cfg.keep, bip)
    else:
        removed, _ = S.from_flops(shape, cfg.flops, bip, first_layer=cfg.first_layer, every=cfg.every)
    record["removed"] = removed
    record["flops_fraction"] = S.flops_fraction(shape, removed)
    # sizes are counts: fp32 whatever the model's dtype (bf16 cannot count past 256)
    st = _State(valid, torch.ones(B, T, device=x.device) if valid is None else valid.float(),
                torch.arange(T, device=x.device).expand(B, -1))
    hidden = [x] if want_hidden else None
    generator = torch.Generator().manual_seed(cfg.seed)
    clock = [0.0]  # seconds of pruning bookkeeping: statistics beyond the fused pass, selection, merging, gathers
    for li, layer in enumerate(fam.layers):
        h = fam.pre_attention(layer, x)
        B, N, _ = h.shape
        q, k, v = (lin(h).view(B, N, fam.heads, -1) for lin in fam.qkv(layer))
        r = min(removed[li], N - protected - 1)
        o, stats = _layer_attention(cfg, q, k, v, st, r > 0, clock)
        x = fam.after_attention(layer, o.reshape(B, N, -1), x)
        if r > 0:
            t0 = time.perf_counter()
            metric = k.flatten(2) if cfg.similarity == "keys" else x
            sel = _select(cfg, li, r, stats, metric, st.valid, protected, generator)
            x, st.size = A.merge_tokens(x, st.size, sel)
            st.source = sel.target.gather(1, st.source)
            if st.valid is not None:
                st.valid = st.valid.gather(1, sel.keep)
            clock[0] += time.perf_counter() - t0
        x = fam.feed_forward(layer, x)
        if want_hidden:
            hidden.append(A._rows(x, st.source))
    record["tokens_out"] = x.shape[1]
    record["bookkeeping_s"] = clock[0]
    full = A._rows(x, st.source)
    return full, x, hidden


def _valid_from_mask(attention_mask, B, T, device):
    if attention_mask is None:
        return None
    m = attention_mask.to(device).bool()
    if m.shape != (B, T):
        raise ValueError(f"attention_mask must be [batch, tokens] = [{B}, {T}], got {tuple(attention_mask.shape)}")
    if not bool(m[:, 0].all()):
        raise ValueError("token pruning keeps the first token of every sequence: it must not be padding "
                         "(right-pad the batch)")
    return None if bool(m.all()) else m


def _bert_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                  inputs_embeds=None, output_hidden_states=None, return_dict=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    st = self._slimformer_tokens
    if kwargs.get("output_attentions"):
        raise ValueError("token pruning does not return attention maps (output_attentions=True)")
    x = self.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids,
                        inputs_embeds=inputs_embeds)
    B, T, _ = x.shape
    valid = _valid_from_mask(attention_mask, B, T, x.device)
    want = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
    full, _, hidden = _run_encoder(st["family"], st["config"], x, valid, st["protected"], want, st["last"])
    pooled = self.pooler(full) if getattr(self, "pooler", None) is not None else None
    return BaseModelOutputWithPooling(last_hidden_state=full, pooler_output=pooled,
                                      hidden_states=tuple(hidden) if want else None)


def _vit_forward(self, pixel_values=None, bool_masked_pos=None, interpolate_pos_encoding=None, attention_mask=None,
                 output_hidden_states=None, return_dict=None, **kwargs):
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    st = self._slimformer_tokens
    if kwargs.get("output_attentions"):
        raise ValueError("token pruning does not return attention maps (output_attentions=True)")
    if attention_mask is not None:
        raise ValueError("token pruning of vision encoders takes no attention_mask (every patch is real)")
    x = self.embeddings(pixel_values.to(self.embeddings.patch_embeddings.projection.weight.dtype),
                        bool_masked_pos=bool_masked_pos, interpolate_pos_encoding=interpolate_pos_encoding)
    want = bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states)
    full, _, hidden = _run_encoder(st["family"], st["config"], x, None, st["protected"], want, st["last"])
    seq = self.layernorm(full) if getattr(self, "layernorm", None) is not None else full
    pooled = self.pooler(seq) if getattr(self, "pooler", None) is not None else None
    return BaseModelOutputWithPooling(last_hidden_state=seq, pooler_output=pooled,
                                      hidden_states=tuple(hidden) if want else None)


def prune_tokens(model: torch.nn.Module, config: TokenPruneConfig) -> torch.nn.Module:
    """Patch every supported encoder inside `model` in place to prune tokens as `config` says; returns model.
    The last forward's schedule is in `model_part._slimformer_tokens["last"]` (removed per layer, FLOP fraction);
    see token_pruning_report(model)."""
    found = 0
    for m in model.modules():
        fam = _family(m)
        if fam is None or not hasattr(m, "config"):
            continue
        if hasattr(m, "_slimformer_tokens"):
            unprune_tokens(m)
        protected = config.protected
        if protected is None:
            protected = 2 if type(m).__name__.startswith("DeiT") and hasattr(m.embeddings, "distillation_token") else 1
        fwd = _bert_forward if isinstance(fam, _Bert) else _vit_forward
        m._slimformer_tokens = {"family": fam, "config": config, "protected": protected, "last": {}}
        m.forward = types.MethodType(fwd, m)
        found += 1
    if not found:
        raise ValueError(f"no supported encoder (BERT family, ViT, DeiT) found in {type(model).__name__}")
    return model


def unprune_tokens(model: torch.nn.Module) -> torch.nn.Module:
    """Undo prune_tokens: the original forwards come back (nothing else was changed)."""
    for m in model.modules():
        if hasattr(m, "_slimformer_tokens"):
            del m._slimformer_tokens
            if "forward" in m.__dict__:
                del m.forward
    return model


def token_pruning_report(model: torch.nn.Module) -> dict:
    """The last forward's schedule of the first patched encoder: removed per layer, FLOP fraction, tokens left, and
    bookkeeping_s, the seconds it spent on pruning itself (statistics beyond the fused attention pass, selection,
    merging and gathers)."""
    for m in model.modules():
        if hasattr(m, "_slimformer_tokens"):
            return dict(m._slimformer_tokens["last"])
    raise ValueError("the model has no token pruning (call prune_tokens first)")
