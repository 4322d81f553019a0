#!/usr/bin/env python
"""Prints the markdown tables of benchmarks/README.md from the JSON files in benchmarks/results/, so that every
figure there is read from a file, never typed in. Usage:

    python benchmarks/results_tables.py              # every table
    python benchmarks/results_tables.py goals-zen4   # one section: goals-zen4, goals-zen3, large_m, layer, a8,
                                                     # demo, kernel, bench, quality, sweep, int8
    python benchmarks/results_tables.py --render benchmarks/README.md.in > benchmarks/README.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

GOALS = [("M=1 bf16: ORT acc4 / slimformer int4 >= 1.3", "M=1 bf16: ORT acc4 time / our int4 time", ">= 1.3"),
         ("M=1 fp32: ORT acc0 / slimformer int4 >= 2.5", "M=1 fp32: ORT acc0 time / our int4 time", ">= 2.5"),
         ("M=1 fp32: slimformer int3 / int4 <= 0.8", "M=1 fp32: our int3 / int4", "<= 0.8"),
         ("M=1 bf16: slimformer int3 / int4 <= 0.8", "M=1 bf16: our int3 / int4", "<= 0.8"),
         ("M=128 bf16: slimformer int4 / dense bf16 <= 1.1", "M=128 bf16: our int4 / dense bf16 torch", "<= 1.1")]


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def fmt(v, digits=2):
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header)))
             + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def goals(files: list[tuple[str, str]]) -> str:
    """Issue 2's goal ratios: one column per (label, file)."""
    data = [(label, load(f)) for label, f in files]
    rows = []
    for key, text, target in GOALS:
        row = [text, target]
        for _, d in data:
            check = next(c for c in d["goals"]["checks"] if c["goal"] == key)
            row.append(f"{check['ratio']:.2f} ({check['min']:.2f}-{check['max']:.2f})")
        rows.append(row)
    out = table(["goal", "target"] + [label for label, _ in data], rows)
    keys = list(data[0][1]["goals"]["us"])
    us = table(["median us per layer (4096 x 4096)"] + [label for label, _ in data],
               [[k] + [round(d["goals"]["us"][k]) for _, d in data] for k in keys]
               + [["read bandwidth, GB/s"] + [f"{d['meta'].get('read_gbs', float('nan')):.1f}" for _, d in data]])
    return out + "\n\n" + us + "\n\nFiles: " + ", ".join(f"`results/{f}`" for _, f in files) + "."


def large_m(name: str) -> str:
    d = load(name)
    rows = [[r["M"], round(r["fused_us"]), round(r["tiles_us"]), round(r["dense_us"]), r["fused_over_dense"],
             r["tiles_over_fused"]] for r in d["rows"]]
    return table(["M", "fused us", "tiles us", f"dense {d['meta']['dtype']} us", "fused / dense", "tiles / fused"],
                 rows) + f"\n\n(`results/{name}`: {d['meta']['shape']}, {d['meta']['layers']} layers, " \
                         f"{d['meta']['isa']}, {d['meta']['threads']} threads, {d['meta']['date']})"


def layer_table(name: str, K: int, N: int, methods=None) -> str:
    d = load(name)
    rows = [r for r in d["rows"] if r["K"] == K and r["N"] == N]
    Ms = sorted({r["M"] for r in rows})
    names = methods or list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for m in names:
        cells = {r["M"]: r["us"] for r in rows if r["method"] == m}
        if cells:
            out.append([m] + [round(cells[M]) if M in cells else "" for M in Ms])
    return table(["method (us per layer)"] + [f"M={M}" for M in Ms], out) + \
        f"\n\n({K} x {N}, `results/{name}`, {d['meta']['date']}, isa {d['meta']['isa']})"


def demo(name: str) -> str:
    d = load(name)
    base_d, base_p = d["rows"][0]["decode_ms"], d["rows"][0]["prefill_ms"]
    rows = [[r["variant"], r["linear_mib"], "-" if r["kernel_err"] != r["kernel_err"] else f"{r['kernel_err']:.1e}",
             r["logit_rel_err"], r["top1_agree"], r["decode_ms"], f"{base_d / r['decode_ms']:.2f}x",
             r["prefill_ms"], f"{base_p / r['prefill_ms']:.2f}x"] for r in d["rows"]]
    m = d["meta"]
    return table(["variant", "linear MiB", "kernel err", "logit rel err", "top-1 agree", "1-token ms", "speedup",
                  f"{m['prompt_len']}-token ms", "speedup"], rows) + \
        f"\n\n(`results/{name}`: hidden {m['hidden']}, {m['layers']} layers, {m['threads']} threads, isa {m['isa']}, " \
        f"{m['date']})"


def bench(name: str) -> str:
    d = load(name)
    cols = [c for c in ("model", "sequences/s", "sequences/s speedup", "decode tokens/s", "decode tokens/s speedup")
            if any(c in r for r in d["rows"])]
    m = d["meta"]
    return table(cols, [[r.get(c, "") for c in cols] for r in d["rows"]]) + \
        f"\n\n(`results/{name}`: batch {m['batch']} x {m['seqlen']} tokens, {m['threads']} threads, {m['date']})"


def kernel(name: str) -> str:
    d = load(name)
    rows = [[r["config"], r["us"], r.get("gbs", "")] for r in d["rows"]]
    return table(["configuration", "us per layer", "GB/s"], rows) + f"\n\n(`results/{name}`, {d['meta']['date']})"


def _when(meta: dict) -> str:
    return f"{meta['date']}, {meta.get('cpu', meta.get('cpu_features', meta.get('machine')))}, {meta['threads']} threads"


def quality() -> str:
    d = load("gptq_quality.json")
    lm = d["tiny_lm"]
    rows = [[r["model"], r["perplexity"]] for r in lm["rows"]]
    out = "Tiny LLaMA, held-out perplexity " \
          f"({lm['held_out_tokens']} tokens, {lm['seqlen']}-token windows; {_when(lm['meta'])}):\n\n" + \
        table(["model", "perplexity"], rows)
    mini = d.get("minilm") or []
    if mini and "unseen mean_cosine" in mini[0]:
        rows = [[r["model"], f"{r['unseen mean_cosine']:.4f}", f"{r['unseen p05_cosine']:.4f}",
                 f"{r['unseen min_cosine']:.4f}", f"{r['selection mean_cosine']:.4f}",
                 f"{r['selection p05_cosine']:.4f}"] for r in mini]
        out += f"\n\nall-MiniLM-L6-v2, cosine to the fp32 embeddings ({_when(d['minilm_meta'])}):\n\n" + table(
            ["model", "unseen: mean", "unseen: 5th pct", "unseen: min", "selection: mean", "selection: 5th pct"], rows)
    return out + "\n\n(`results/gptq_quality.json`)"


def int8() -> str:
    d = load("gptq_quality.json")["int8_activations"]
    rows = [[r["model"], r["perplexity"]] for r in d["tiny_lm"]]
    out = table(["tiny LLaMA", "held-out perplexity"], rows)
    rows = [[r["model"], f"{r['mean_cosine']:.4f}", f"{r['p05_cosine']:.4f}"] for r in d["minilm"]]
    out += "\n\n" + table(["all-MiniLM-L6-v2 (selection sentences)", "mean cosine", "5th pct"], rows)
    return out + f"\n\n(`results/gptq_quality.json`, key `int8_activations`: {_when(d)})"


def sweep() -> str:
    d = load("gptq_minilm_sweep.json")
    rows = [[key, f"{r['selection mean_cosine']:.4f}", f"{r['selection p05_cosine']:.4f}"]
            for key, r in d["rows"].items()]
    return table(["setting (MiniLM, group 128, act-order)", "selection: mean cosine", "selection: 5th pct"], rows) + \
        f"\n\n(`results/gptq_minilm_sweep.json`, {d['date']})"


def _bandwidth_note(d) -> str:
    """Older runs probed the read bandwidth once; newer ones between the timings of every repeat."""
    m = d["meta"]
    probed = [bw for r in d["rows"] for bw in r.get("bandwidth_rounds_gbs", [])]
    if not probed:
        return f"\n\nRead bandwidth measured in the same run: {m['read_bandwidth_gbs']:.1f} GB/s"
    return (f"\n\nRead bandwidth (torch sum over 1 GiB) probed between the timings of every repeat: median "
            f"{m['read_bandwidth_gbs']:.1f} GB/s, range {min(probed):.1f}-{max(probed):.1f}; each row's % is the median "
            f"of its repeats' kernel-over-neighbouring-probe fractions")


def sparse24_speed(name: str) -> str:
    """bench_sparse24.py: per shape and dtype, 2:4 vs dense torch at each M (2:4 + int4 vs our dense int4)."""
    d = load(name)
    m = d["meta"]
    rows = [[r["shape"], r["dtype"], r["M"], round(r["sparse_us"]), round(r["dense_us"]), f"{r['dense_over_sparse']:.2f}",
             f"{r['sparse_us'] / r['dense_us']:.2f}", f"{r['sparse_gbs']:.1f} ({100 * r['sparse_bandwidth_fraction']:.0f}%)"]
            for r in d["rows"]]
    return table(["K x N", "dtype", "M", "2:4 us", "dense us", "dense / 2:4", "2:4 / dense", "2:4 reads GB/s (% of read bw)"],
                 rows) + ("\n\nRows `int4-bf16` / `int4-fp32`: 2:4 + int4 (`Sparse24QuantLinear`, group 128) against our "
                          "dense int4 kernel (`QuantLinear`, group 128) in the \"dense\" column; the others against dense "
                          "torch `F.linear` in that dtype." if any(r["dtype"].startswith("int4") for r in d["rows"]) else "") + (_bandwidth_note(d) + "; ISA path "
                          f"`{m['isa']}`; {m['layers']} layers, {m['repeats']} alternating repeats of {m['rounds']} rounds"
                          + ("; every weight, ours and the baselines', and the probe on transparent huge pages"
                             if m.get("hugepages") else "") + " "
                          f"(`results/{name}`, {m['date']}, {m['cpu']}, {m['threads']} threads).")


def sparse24_quality() -> str:
    d = load("sparse24_quality.json")
    out = []
    if "minilm" in d:
        mm = d["minilm"]
        alphas = ", ".join(f"{a}: {v:.4f}" for a, v in mm["alpha_on_selection"].items())
        out.append(f"all-MiniLM-L6-v2, mean sentence cosine to the dense model ({mm['calibration sentences']} calibration "
                   f"sentences, {mm['scored sentences']} scored per set; asymmetric alpha chosen on the selection text, "
                   f"2:4 FFN: {alphas}; {_when(mm['meta'])}):\n\n" + table(
                       ["pruning", "unseen: mean cosine", "selection: mean cosine", "prune s"],
                       [[r["model"], f"{r['unseen mean_cosine']:.4f}", f"{r['selection mean_cosine']:.4f}",
                         f"{r['prune s']:.0f}"] for r in mm["rows"]]))
    if "tiny_lm" in d:
        t = d["tiny_lm"]
        out.append(f"Tiny LLaMA (4 x 256), held-out perplexity over {t['held_out_tokens']} tokens "
                   f"({_when(t['meta'])}):\n\n" + table(["pruning", "perplexity"],
                                                       [[r["model"], f"{r['perplexity']:.2f}"] for r in t["rows"]]))
    return "\n\n".join(out) + "\n\n(`results/sparse24_quality.json`)"


def sparsegpt_published() -> str:
    d = load("sparsegpt_vs_published.json")
    rows = [[k.replace(" error", ""), f"{v:.4e}"] for k, v in d["mean"].items()]
    return table(["variant (12 FFN linears of all-MiniLM-L6-v2)", "mean relative output error"], rows) + \
        f"\n\n(`results/sparsegpt_vs_published.json`, {d['meta']['date']}; {d['meta']['published']})"


def tokens_speed(name: str) -> str:
    """bench_tokens.py: the fused attention against SDPA, and whole encoders per method."""
    d = load(name)
    m = d["meta"]
    parts = []
    if "attention" in d:
        filt = "fused: out + importance + head-filtered mean"  # (runs from 2026-12-01 on)
        has_filt = any(filt in r for r in d["attention"])
        rows = [[r["tokens"], f"{r['sdpa']:.2f}", f"{r['fused: out + importance']:.2f}",
                 f"{r['fused: out + importance + head mean']:.2f}"] + ([f"{r.get(filt, float('nan')):.2f}"] if has_filt
                                                                       else []) +
                [f"{r['fused: statistics only (no out)']:.2f}", f"{r['fused over sdpa']:.2f}"] for r in d["attention"]]
        parts.append(f"Attention alone, batch {m['batch']}, 6 heads of 64, fp32, ms:\n\n" + table(
            ["tokens", "torch SDPA", "fused: out + importance", "+ head-averaged matrix"] +
            (["+ head-filtered mean (Zero-TPrune's pass)"] if has_filt else []) + ["statistics only", "fused / SDPA"],
            rows))
    rows = []
    for r in d["encoders"]:
        rows.append([r["shape"], r["method"], f"{r['images_per_s']:.1f}", f"{r['speedup']:.2f}",
                     f"{r['flops_fraction']:.3f}" if "flops_fraction" in r else "1",
                     r.get("tokens_out", m.get("tokens", 197)),
                     f"{100 * r['bookkeeping_share']:.1f}%" if "bookkeeping_share" in r else ""])
    size = m.get("image_size", 224)
    parts.append(f"Encoders (ViTModel from configs, {size} x {size}, {m.get('tokens', 197)} tokens), fp32, batch "
                 f"{m['batch']}, FLOP target "
                 f"{m['flops_target']}:\n\n" + table(["encoder", "method", "images/s", "speedup", "FLOP fraction",
                                                       "tokens at the end", "pruning bookkeeping"], rows))
    return "\n\n".join(parts) + (f"\n\n`results/{name}`, {m['date']}, {m['cpu']}, {m['threads']} threads, ISA path "
                                  f"`{m['isa']}`, {m['repeats']} alternating repeats of the median of {m['reps']}.")


def tokens_quality(name: str) -> str:
    """eval_tokens_quality.py: MiniLM cosine and the digits ViT's top-1 against the FLOP fraction."""
    d = load(name)
    m = d["meta"]
    parts = []
    if "minilm" in d:
        q = d["minilm"]
        methods = list(dict.fromkeys(r["method"] for r in q["rows"]))
        targets = sorted({r["flops_target"] for r in q["rows"]}, reverse=True)
        rows = []
        for meth in methods:
            by_t = {r["flops_target"]: r for r in q["rows"] if r["method"] == meth}
            sp = q["speed_at_0_65"].get(meth, {}).get("speedup")
            rows.append([meth] + [f"{by_t[t]['unseen mean_cosine']:.4f} ({by_t[t]['selection mean_cosine']:.4f})"
                                  for t in targets] + [f"{sp:.2f}x" if sp else ""])
        fr = {t: next(r["flops_fraction"] for r in q["rows"] if r["flops_target"] == t) for t in targets}
        parts.append("all-MiniLM-L6-v2, mean sentence cosine to the unpruned model on unseen text (selection text "
                     "in brackets), 64-token passages, by the fraction of the encoder's FLOPs kept:\n\n" + table(
                         ["method"] + [f"{t} ({fr[t]:.3f})" for t in targets] + ["speed at 0.65"], rows))
        rows = [[a["method"], f"{a['flops_fraction']:.3f}", f"{a['unseen mean_cosine']:.4f}",
                 f"{a['selection mean_cosine']:.4f}"] for a in q["anchors"]]
        parts.append("Single-cut anchors (one cut in layer index 1):\n\n" + table(
            ["method", "FLOP fraction", "unseen cosine", "selection cosine"], rows) +
            f"\n\n`unprune_tokens` restores the exact outputs: {q['unprune_restores_exactly']}; passages: "
            f"{q['passages']}.")
    if "vit" in d:
        v = d["vit"]
        base = next(r["top1"] for r in v["rows"] if r["method"] == "unpruned")
        methods = list(dict.fromkeys(r["method"] for r in v["rows"] if r["method"] != "unpruned"))
        targets = sorted({r["flops_target"] for r in v["rows"] if r["method"] != "unpruned"}, reverse=True)
        rows = []
        for meth in methods:
            by_t = {r["flops_target"]: r for r in v["rows"] if r["method"] == meth}
            rows.append([meth] + [f"{by_t[t]['top1']:.2f} ({-by_t[t]['drop']:+.2f})" for t in targets])
        parts.append(f"ViT on digits ({v['tokens']} tokens, 6 layers, trained here in {v['train_s']:.0f} s, "
                     f"{v['test_images']} held-out images; unpruned top-1 {base:.2f}%), top-1 (change) by the "
                     f"FLOP fraction kept:\n\n" + table(["method"] + [str(t) for t in targets], rows))
    return "\n\n".join(parts) + f"\n\n(`results/{name}`, {m['date']}, {m['cpu']}, {m['threads']} threads.)"


SECTIONS = {
    "goals-zen4": lambda: goals([("avx2", "gptq_cpu_goals_zen4_avx2.json"),
                                 ("avx512", "gptq_cpu_goals_zen4_avx512.json"),
                                 ("avx512vnni", "gptq_cpu_goals_zen4_avx512vnni.json"),
                                 ("avx512bf16 (default)", "gptq_cpu_goals_zen4_avx512bf16.json"),
                                 ("avx512bf16, run 2", "gptq_cpu_goals_zen4_avx512bf16_run2.json"),
                                 ("avx512bf16, run 3", "gptq_cpu_goals_zen4_avx512bf16_run3.json")]),
    "goals-zen3": lambda: goals([("avx2, run A", "gptq_cpu.json"), ("avx2, run B", "gptq_cpu_goals.json")]),
    "large_m": lambda: large_m("gptq_cpu_large_m_zen4_bf16.json"),
    "layer": lambda: "\n\n".join(layer_table("gptq_cpu.json", K, N) for K, N in
                                 ((4096, 4096), (4096, 11008), (11008, 4096))),
    "a8": lambda: layer_table("gptq_cpu_a8.json", 4096, 4096) + "\n\n" + layer_table("gptq_cpu_a8_prefill.json",
                                                                                       4096, 4096),
    "demo": lambda: demo("demo_zen4.json"),
    "kernel": lambda: kernel("kernel_zen4.json"),
    "bench": lambda: "all-MiniLM-L6-v2, RTN int4 g128 (`slimformer quantize --method rtn`), fp32:\n\n"
    + bench("bench_minilm_zen4.json") + "\n\nLLaMA-shaped, hidden 2048, 4 blocks, vocab 32000, 333M parameters "
    "(random weights; embeddings and lm_head stay dense fp32), RTN int4 g128, fp32:\n\n"
    + bench("bench_llama2048_zen4.json") + "\n\nall-MiniLM-L6-v2, feed-forward linears 2:4 (`slimformer sparsify "
    "--method sparsegpt --asym-calibration --asym-alpha 1`), fp32:\n\n" + bench("bench_minilm24_zen4.json"),
    "quality": quality,
    "sweep": sweep,
    "int8": int8,
    "sparse24-zen4": lambda: sparse24_speed("sparse24_cpu_zen4.json"),
    "sparse24-zen4-goals": lambda: sparse24_speed("sparse24_cpu_zen4_goals.json"),
    "sparse24-emr": lambda: sparse24_speed("sparse24_cpu_emr.json"),
    "sparse24-xeon167": lambda: sparse24_speed("sparse24_cpu_xeon167_bf16.json"),
    "sparse24-xeon167-full": lambda: sparse24_speed("sparse24_cpu_xeon167.json"),
    "goals-xeon167": lambda: goals([("amx (default)", "gptq_cpu_goals_xeon167_amx.json")]),
    "sparse24-quality": sparse24_quality,
    "sparsegpt-published": sparsegpt_published,
    "tokens-speed": lambda: tokens_speed("tokens_speed_zen4.json"),
    "tokens-quality": lambda: tokens_quality("tokens_quality.json"),
}

def render(template: Path) -> str:
    """The template with every @@section@@ line replaced by that section's tables."""
    out = []
    for line in template.read_text().splitlines():
        if line.startswith("@@") and line.endswith("@@"):
            out.append(SECTIONS[line.strip("@")]())
        else:
            out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # python benchmarks/results_tables.py --render README.md.in > README.md
        sys.stdout.write(render(Path(sys.argv[2])))
        sys.exit(0)
    wanted = sys.argv[1:] or list(SECTIONS)
    for name in wanted:
        print(f"### {name}\n")
        try:
            print(SECTIONS[name]() + "\n")
        except FileNotFoundError as e:
            print(f"(no results file: {e.filename})\n")
