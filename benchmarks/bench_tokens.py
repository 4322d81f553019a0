"""Token pruning speed on this CPU: the fused token-pruned attention kernel against torch SDPA, and whole encoders.

1. Attention alone, q/k/v [32, N, H, 64] fp32: torch.nn.functional.scaled_dot_product_attention against
   slimformer's kernel giving the output and per-head importance, the output plus the head-averaged matrix, the
   output plus Zero-TPrune's head-filtered mean (the pass its pruning layers run), and the statistics-only pass (no
   output), alternating repeats, medians.
2. DeiT-S- and ViT-B-shaped encoders (transformers ViTModel built from configs, random weights: speed does not depend
   on them), fp32, batch 32 of 224 x 224 images (197 tokens): the unpruned model against each method at a FLOP
   target (default 0.653: DeiT-S's 34.7% cut) with a constant r at every layer and, as a second schedule, at every
   third layer (fewer, larger cuts: `--every`), alternating, medians; images/s, speedup, and the share of the pruned
   model's time spent on pruning itself (token_pruning_report's bookkeeping_s: statistics beyond the fused pass,
   selection, merging and gathers).
3. With --layer-tokens: one unpruned layer alone at those token counts, ms per layer and us per token.

    python benchmarks/bench_tokens.py --json benchmarks/results/tokens_speed_zen4.json
    python benchmarks/bench_tokens.py --skip-attention --shapes deit-s --methods random --every 1 --repeats 1 \
        --layer-tokens 65 100 128 153 164 186 197 --json benchmarks/results/tokens_layer_zen4.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import slimformer  # noqa: E402
from bench_gptq import _cpu_name  # noqa: E402
from slimformer.demo import time_ms as median_ms  # noqa: E402
from slimformer.tokens.attention import attention, attention_head_filtered  # noqa: E402

SHAPES = {"deit-s": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
          "vit-b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}


def bench_attention(tokens: list[int], heads: int, batch: int, reps: int, repeats: int) -> list[dict]:
    rows = []
    for N in tqdm(tokens, desc="attention", leave=False):
        g = torch.Generator().manual_seed(N)
        q, k, v = (torch.randn(batch, N, heads, 64, generator=g) for _ in range(3))
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        w = torch.ones(batch, heads)
        fns = {"sdpa": lambda: F.scaled_dot_product_attention(qt, kt, vt),
               "fused: out + importance": lambda: attention(q, k, v),
               "fused: out + importance + head mean": lambda: attention(q, k, v, need_probs=True),
               "fused: out + importance + head-filtered mean": lambda: attention_head_filtered(q, k, v),
               "fused: statistics only (no out)": lambda: attention(q, k, v, head_weights=w, need_out=False,
                                                                    need_probs=True)}
        got = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                got[name].append(median_ms(fn, reps))
        row = dict(tokens=N, heads=heads, batch=batch, **{name: statistics.median(t) for name, t in got.items()})
        row["fused over sdpa"] = row["fused: out + importance"] / row["sdpa"]
        rows.append(row)
        print(row, flush=True)
    return rows


def vit(shape: str, image_size: int = 224, layers: int | None = None):
    """A ViTModel of the named shape (random weights, seed 0), `layers` overriding its 12."""
    from transformers import ViTConfig, ViTModel
    torch.manual_seed(0)
    fields = dict(SHAPES[shape])
    if layers is not None:
        fields["num_hidden_layers"] = layers
    return ViTModel(ViTConfig(image_size=image_size, patch_size=16, **fields), add_pooling_layer=False).eval()


def bench_encoder(shape: str, methods: list[str], flops: float, batch: int, reps: int, repeats: int,
                  image_size: int = 224, layers: int | None = None, every: tuple[int, ...] = (1,)) -> list[dict]:
    model = vit(shape, image_size, layers)
    px = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    configs = {"unpruned": None}
    for m in methods:
        for k in every:
            configs[m if k == 1 else f"{m} (every {k})"] = slimformer.TokenPruneConfig(method=m, flops=flops, every=k)
    got = {name: [] for name in configs}
    book = {name: [] for name in configs}
    report = {}
    with torch.no_grad():
        for _ in tqdm(range(repeats), desc=f"{shape} repeats", leave=False):
            for name, cfg in configs.items():
                slimformer.unprune_tokens(model)
                if cfg is not None:
                    slimformer.prune_tokens(model, cfg)
                got[name].append(median_ms(lambda: model(pixel_values=px), reps))
                if cfg is not None:
                    report[name] = slimformer.token_pruning_report(model)
                    book[name].append(report[name]["bookkeeping_s"] * 1e3)
    slimformer.unprune_tokens(model)
    base = statistics.median(got["unpruned"])
    rows = []
    for name in configs:
        t = statistics.median(got[name])
        row = dict(shape=shape, method=name, batch=batch, ms=t, images_per_s=batch / t * 1e3, speedup=base / t,
                   rounds_ms=got[name])
        if name != "unpruned":
            b = statistics.median(book[name])
            row.update(flops_fraction=report[name]["flops_fraction"], removed_per_layer=report[name]["removed"],
                       tokens_out=report[name]["tokens_out"], bookkeeping_ms=b, bookkeeping_share=b / t)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "rounds_ms"}, flush=True)
    return rows


def bench_layer_tokens(shape: str, tokens: list[int], batch: int, reps: int, repeats: int = 5) -> list[dict]:
    """The unpruned model's layers alone on random hidden states [batch, N, hidden], for each N: how the time per
    token grows with the tokens (attention, and the feed-forward intermediate outgrowing the cache)."""
    model = vit(shape, layers=2)
    xs = {N: torch.randn(batch, N, SHAPES[shape]["hidden_size"]) for N in tokens}
    got = {N: [] for N in tokens}
    with torch.no_grad():
        for _ in tqdm(range(repeats), desc=f"{shape} layer tokens", leave=False):
            for N, x in xs.items():
                got[N].append(median_ms(lambda: [layer(x) for layer in model.layers], reps) / 2)
    rows = []
    for N in tokens:
        t = statistics.median(got[N])
        rows.append(dict(shape=shape, tokens=N, batch=batch, ms_per_layer=t, us_per_token=t / N * 1e3))
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["deit-s", "vit-b"], choices=sorted(SHAPES))
    p.add_argument("--methods", nargs="+", default=list(slimformer.tokens.METHODS))
    p.add_argument("--flops", type=float, default=0.653)
    p.add_argument("--every", nargs="+", type=int, default=[1, 3],
                   help="schedules: prune every k-th layer (1: all 12, ToMe's; 3: 4 larger cuts), r solved for --flops")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", nargs="+", type=int, default=[65, 128, 197])
    p.add_argument("--reps", type=int, default=3, help="timed forwards per measurement (median)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats (median)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-attention", action="store_true")
    p.add_argument("--image-size", type=int, default=224, help="smaller for a quick check (tokens: (size/16)^2 + 1)")
    p.add_argument("--layers", type=int, default=None, help="override the encoders' 12 layers (quick checks)")
    p.add_argument("--layer-tokens", nargs="+", type=int, default=None,
                   help="also time one unpruned layer at these token counts (time per token against N)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {"meta": dict(date=str(date.today()), cpu=_cpu_name(), threads=args.threads, torch=torch.__version__,
                           isa=slimformer.ops.cpu_isa(), batch=args.batch, flops_target=args.flops,
                           reps=args.reps, repeats=args.repeats, image_size=args.image_size,
                           tokens=(args.image_size // 16) ** 2 + 1)}
    if not args.skip_attention:
        result["attention"] = bench_attention(args.tokens, 6, args.batch, max(args.reps, 5), args.repeats)
    if args.layer_tokens:
        result["layer_tokens"] = [r for shape in args.shapes
                                  for r in bench_layer_tokens(shape, args.layer_tokens, args.batch, args.reps)]
    result["encoders"] = []
    for shape in args.shapes:
        result["encoders"] += bench_encoder(shape, args.methods, args.flops, args.batch, args.reps, args.repeats,
                                            args.image_size, args.layers, tuple(args.every))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
