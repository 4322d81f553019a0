#!/usr/bin/env python
"""Where the CPU should switch from the fused GPTQ kernels to dequantized tiles + dense GEMM, and how int4 compares
with dense torch at prefill sizes: 4096 x 4096 int4 g128, 16 distinct layers, for each M the fused path
(SLIMFORMER_CPU_LARGE_M=huge), the tile path (SLIMFORMER_CPU_LARGE_M=1) and dense torch in the activations' dtype,
timed side by side in alternating repeats (median of repeats of the median of rounds). Prints a table, writes JSON.

    python benchmarks/bench_gptq_large_m.py --m 64 128 256 512 --dtype bfloat16
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_gptq import _cpu_name, median_us, random_quant_layer  # noqa: E402

import slimformer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--m", nargs="+", type=int, default=[64, 128, 256, 512])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    K = N = 4096
    q4 = [random_quant_layer(K, N, 4, 128) for _ in range(args.layers)]
    dense = [(torch.randn(N, K) * 0.02).to(dtype) for _ in range(args.layers)]
    rows = []
    for M in args.m:
        x = torch.randn(M, K).to(dtype)
        got = {"fused": [], "tiles": [], "dense": []}
        for _ in range(args.repeats):
            for path, env in (("fused", "1000000000"), ("tiles", "1")):
                os.environ["SLIMFORMER_CPU_LARGE_M"] = env
                got[path].append(median_us(lambda i: q4[i](x), args.layers, args.rounds))
            got["dense"].append(median_us(lambda i: torch.nn.functional.linear(x, dense[i]), args.layers, args.rounds))
        os.environ.pop("SLIMFORMER_CPU_LARGE_M")
        med = {k: statistics.median(v) for k, v in got.items()}
        rows.append(dict(M=M, fused_us=med["fused"], tiles_us=med["tiles"], dense_us=med["dense"],
                         fused_over_dense=med["fused"] / med["dense"], tiles_over_fused=med["tiles"] / med["fused"]))
        r = rows[-1]
        print(f"M={M:5d}  fused {r['fused_us']:10.0f} us  tiles {r['tiles_us']:10.0f} us  dense {args.dtype} "
              f"{r['dense_us']:10.0f} us  fused/dense {r['fused_over_dense']:.2f}  tiles/fused {r['tiles_over_fused']:.2f}",
              flush=True)
    meta = dict(date=str(date.today()), cpu=_cpu_name(), threads=args.threads, torch=torch.__version__,
                cpu_features=slimformer.ops.cpu_features(), isa=slimformer.ops.cpu_isa(), dtype=args.dtype,
                shape="4096x4096 int4 g128", layers=args.layers)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
