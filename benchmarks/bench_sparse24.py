#!/usr/bin/env python
"""2:4 sparse linear-layer benchmark (CPU): the FFN shapes of a 7B LLaMA, 4096x11008 (in x out) and 11008x4096.

For each shape, `--layers` distinct weights (more than the last-level cache holds, as a decode step sees them) and
each M, timed side by side in alternating repeats (median of repeats of the median of rounds, per layer):
  2:4 bf16 values, bf16 activations (slimformer.ops.sparse24_gemm; the ISA path in the JSON),
  dense torch bf16 nn.functional.linear (the same weights with their zeros),
  2:4 fp32 values, fp32 activations, and dense torch fp32;
  2:4 + int4 (Sparse24QuantLinear, group 128, fp16 scales) vs our dense int4 GPTQ kernel (QuantLinear, group 128),
  bf16 activations (dtype "int4-bf16") and fp32 ("int4-fp32").
Effective GB/s is the compressed weight bytes (values + bitmask; for int4 the tiles, scales and zeros) over the time,
against a read bandwidth measured here (torch sum over 1 GiB). The bandwidth of these shared machines moves by up to
2x within minutes, so it is probed in every repeat, between the kernel's timings, and the fraction is the median of
the per-repeat fractions (each kernel time over the bandwidth measured next to it). Every weight, ours and the
dense baselines', and the bandwidth probe lie on transparent huge pages where the OS allows (slimformer.hugepages, as
the modules keep theirs); --no-hugepages puts them all on ordinary pages. Prints a table, writes JSON.

    python benchmarks/bench_sparse24.py --json benchmarks/results/sparse24_cpu_zen4.json
    python benchmarks/bench_sparse24.py --shapes 4096x11008 --m 1 --rounds 7
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
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from bench_gptq import _cpu_name, median_us, random_quant_layer, read_bandwidth_gbs  # noqa: E402

import slimformer  # noqa: E402
from slimformer.hugepages import hugepage_copy  # noqa: E402
from slimformer.sparse24 import format as F  # noqa: E402


def make_layers(K: int, N: int, count: int, dtype: torch.dtype, seed: int = 0):
    """(sparse (values, bitmask), dense weight with zeros) pairs; random values (speed does not depend on them)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        w = (torch.randn(N, K, generator=g) * 0.02).to(dtype)
        mask = F.nm_mask(w.float().abs())
        values, bitmask = F.compress(w, mask)
        out.append(((hugepage_copy(values), hugepage_copy(bitmask)), hugepage_copy(w * mask)))
    return out


def make_int4_layers(K: int, N: int, count: int, seed: int = 0):
    """(Sparse24QuantLinear, dense int4 QuantLinear) pairs with random codes, masks and scales (group 128)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        mask = F.nm_mask(torch.rand(N, K, generator=g))
        codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.int32)
        G = -(-K // 128)
        scales = (torch.rand(N, G, generator=g) * 0.01 + 1e-3).half()
        sparse = slimformer.Sparse24QuantLinear.from_quantized(codes, mask, scales, torch.full((N, G), 8), 128)
        out.append((sparse, random_quant_layer(K, N, 4, 128)))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["4096x11008", "11008x4096"], help="KxN (in x out)")
    p.add_argument("--m", nargs="+", type=int, default=[1, 4, 16, 64, 128])
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--no-fp32", action="store_true", help="skip the fp32 rows (half the memory and time)")
    p.add_argument("--no-int4", action="store_true", help="skip the 2:4 + int4 rows")
    p.add_argument("--json", default=None)
    p.add_argument("--no-hugepages", action="store_true", help="every weight and the probe on ordinary 4 KiB pages")
    args = p.parse_args()
    if args.no_hugepages:
        os.environ["SLIMFORMER_HUGEPAGES"] = "0"
    torch.set_num_threads(args.threads)
    probe = hugepage_copy(torch.ones(1024 * 1024 * 1024 // 4))
    probes = []

    def bandwidth_now():
        probes.append(read_bandwidth_gbs(buf=probe, reps=3))
        return probes[-1]

    def timed(fn_sparse, fn_dense, nbytes):
        got = {"sparse": [], "dense": [], "bw": []}
        for _ in range(args.repeats):
            got["sparse"].append(median_us(fn_sparse, args.layers, args.rounds))
            got["bw"].append(bandwidth_now())
            got["dense"].append(median_us(fn_dense, args.layers, args.rounds))
        s, d = statistics.median(got["sparse"]), statistics.median(got["dense"])
        frac = statistics.median(nbytes / t / 1e3 / bw for t, bw in zip(got["sparse"], got["bw"]))
        return dict(sparse_us=s, dense_us=d, dense_over_sparse=d / s, sparse_gbs=nbytes / s / 1e3,
                    sparse_bandwidth_fraction=frac, bandwidth_gbs=statistics.median(got["bw"]),
                    sparse_rounds_us=got["sparse"], dense_rounds_us=got["dense"], bandwidth_rounds_gbs=got["bw"])

    rows = []
    for shape in args.shapes:
        K, N = (int(v) for v in shape.lower().split("x"))
        kinds = [("bf16", torch.bfloat16)] + ([] if args.no_fp32 else [("fp32", torch.float32)])
        for label, dtype in kinds:
            layers = make_layers(K, N, args.layers, dtype)
            nbytes = N * (K // 2) * layers[0][0][0].element_size() + N * ((K + 7) // 8)
            for M in tqdm(args.m, desc=f"{shape} {label}", leave=False):
                x = torch.randn(M, K).to(dtype)
                r = timed(lambda i: slimformer.ops.sparse24_gemm(x, layers[i][0][0], layers[i][0][1], None, K),
                          lambda i: torch.nn.functional.linear(x, layers[i][1]), nbytes)
                rows.append(dict(shape=shape, K=K, N=N, dtype=label, M=M, **r))
                print(f"{shape:>11s} {label}  M={M:4d}  2:4 {r['sparse_us']:9.0f} us  dense {r['dense_us']:9.0f} us"
                      f"  dense/2:4 {r['dense_over_sparse']:5.2f}  2:4 reads {r['sparse_gbs']:5.1f} GB/s "
                      f"({100 * r['sparse_bandwidth_fraction']:.0f}% of {r['bandwidth_gbs']:.1f})", flush=True)
            del layers
        if args.no_int4:
            continue
        layers = make_int4_layers(K, N, args.layers)
        sp = layers[0][0]
        nbytes = sp.tiles.numel() + sp.scales.numel() * 2 + sp.zeros.numel()
        for label, dtype in [("int4-bf16", torch.bfloat16)] + ([] if args.no_fp32 else [("int4-fp32", torch.float32)]):
            for M in tqdm(args.m, desc=f"{shape} {label}", leave=False):
                x = torch.randn(M, K).to(dtype)
                r = timed(lambda i: layers[i][0](x), lambda i: layers[i][1](x), nbytes)
                rows.append(dict(shape=shape, K=K, N=N, dtype=label, M=M, dense="int4 QuantLinear", **r))
                print(f"{shape:>11s} {label}  M={M:4d}  2:4+int4 {r['sparse_us']:9.0f} us  dense int4 "
                      f"{r['dense_us']:9.0f} us  int4/2:4+int4 {r['dense_over_sparse']:5.2f}  reads "
                      f"{r['sparse_gbs']:5.1f} GB/s ({100 * r['sparse_bandwidth_fraction']:.0f}% of "
                      f"{r['bandwidth_gbs']:.1f})", flush=True)
        del layers
    meta = dict(date=str(date.today()), cpu=_cpu_name(), threads=args.threads, torch=torch.__version__,
                cpu_features=slimformer.ops.cpu_features(), isa=slimformer.ops.cpu_isa(),
                read_bandwidth_gbs=statistics.median(probes) if probes else None, layers=args.layers, rounds=args.rounds,
                repeats=args.repeats, hugepages=not args.no_hugepages)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    main()
