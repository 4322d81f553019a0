#!/usr/bin/env python
"""Runs the raw-kernel benchmark (bench_gptq_kernel, C++) over the configurations of benchmarks/README.md's raw-kernel
table and writes them to JSON (rows: config, us, gbs). The binary is the one CMake built (build/*/) or installed
(slimformer/bin/).

    python benchmarks/bench_kernel_table.py --json benchmarks/results/kernel_zen4.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import slimformer
from slimformer import ops

ROOT = Path(__file__).resolve().parent.parent
SIMD = ("avx2", "avx512", "avx512vnni", "avx512bf16")
CONFIGS = [  # (label, arguments, ISA paths: None = every path the CPU has, scalar included)
    ("M=1, 2 threads, 16 layers (weights stream from DRAM)", ["--m", "1", "--threads", "2", "--layers", "16"], None),
    ("M=1, 1 thread, 1 layer (cache-resident)", ["--m", "1", "--threads", "1", "--layers", "1"], SIMD),
    ("M=1, int3, 2 threads, 16 layers", ["--m", "1", "--bits", "3", "--threads", "2", "--layers", "16"], SIMD),
    ("M=128, 2 threads, 16 layers", ["--m", "128", "--threads", "2", "--layers", "16", "--iters", "5"], SIMD),
]


def binary() -> Path:
    found = sorted(ROOT.glob("build/*/bench_gptq_kernel")) + [Path(slimformer.__file__).parent / "bin" /
                                                              "bench_gptq_kernel"]
    for f in found:
        if f.is_file():
            return f
    raise SystemExit("bench_gptq_kernel not found: build the package first (make install)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, required=True)
    args = p.parse_args()
    exe = binary()
    rows = []
    have = ops.cpu_features()
    for label, extra, isas in CONFIGS:
        runs = [[]] if isas is None else [["--isa", i] for i in isas if f"{i}=1" in have]
        out = "".join(subprocess.run([str(exe), "--k", "4096", "--n", "4096", "--json", *extra, *isa], check=True,
                                     capture_output=True, text=True).stdout for isa in runs)
        for line in out.splitlines():
            r = json.loads(line)
            rows.append({"config": f"{label}: {r['isa']}", "us": r["us_per_layer"], "gbs": r["gb_per_s"]})
            print(rows[-1])
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu_features": ops.cpu_features(), "binary": str(exe)}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
