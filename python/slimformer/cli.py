"""slimformer command line.

  slimformer info                                   the build, the CPU features and the kernel path in use
  slimformer quantize MODEL_DIR OUT_DIR --bits 4 --group-size 128 [--desc-act] --calib FILE.txt
  slimformer sparsify MODEL_DIR OUT_DIR --method sparsegpt [--n 2 --m 4] [--targets ffn|all] --calib FILE.txt
  slimformer eval MODEL_DIR --text FILE.txt [--reference DENSE_DIR]
  slimformer bench MODEL_DIR [--reference DENSE_DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path


class CliError(Exception):
    pass


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _check_seqlen(model, seqlen: int, flag: str = "--seqlen", minimum: int = 1) -> int:
    limit = getattr(model.config, "max_position_embeddings", None)
    if seqlen < minimum:
        raise CliError(f"{flag} must be at least {minimum}, got {seqlen}")
    if limit is not None and seqlen > limit:
        raise CliError(f"{flag} {seqlen} is longer than the model's max_position_embeddings ({limit})")
    return seqlen


def _check_out_dir(model_dir: Path, out_dir: Path):
    """The cheap checks, before any quantization: where the checkpoint goes must be a directory we may write, and
    not the dense model's own."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"OUT_DIR {out_dir} exists and is not a directory")
    if out_dir.resolve() == model_dir.resolve():
        raise CliError(f"OUT_DIR is MODEL_DIR ({model_dir}): that would overwrite the dense model; choose another "
                       "directory")
    parent = out_dir.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"OUT_DIR {out_dir} cannot be created: {parent} is not a directory")


def _info(args):
    import torch

    import slimformer
    from slimformer import ops
    print(f"slimformer {slimformer.__version__}, torch {torch.__version__}")
    print(f"native extension: {'yes' if ops.HAS_NATIVE else 'no'}")
    print(f"cpu: {ops.cpu_features()}; active path: {ops.cpu_isa()}")
    print(f"cuda: {'available' if torch.cuda.is_available() else 'not available'}")
    print("formats: " + ", ".join(sorted(slimformer.FORMATS)))


def _calibration(args, model, tokenizer, who: str):
    """Calibration samples from args.calib: token windows for causal LMs, sentences for encoders."""
    from slimformer import evaluate as ev

    if args.calib is None:
        raise CliError(f"--calib FILE.txt is required for {who}")
    if tokenizer is None:
        raise CliError(f"{args.model_dir} has no tokenizer files to tokenize the calibration text with")
    seqlen = _check_seqlen(model, args.seqlen, minimum=2)
    text = ev.read_text(args.calib)
    if ev.is_causal_lm(model.config):
        ids = ev.token_ids(tokenizer, text)
        calib = ev.calibration_windows(ids, args.nsamples, seqlen, seed=args.seed)
        print(f"calibration: {len(calib)} windows of up to {seqlen} tokens from {args.calib} ({ids.numel()} tokens)")
        return calib
    # encoders are used on sentences; long windows calibrate them worse (benchmarks/README.md)
    calib = ev.sample_sentences(text, args.nsamples, random.Random(args.seed))
    if not calib:
        raise CliError(f"{args.calib} has no sentences of 5 to 60 words to calibrate an encoder with")
    print(f"calibration: {len(calib)} sentences from {args.calib}")
    return calib


def _save_and_report(model, tokenizer, out_dir, report, what: str):
    import slimformer
    from slimformer import evaluate as ev

    slimformer.save_pretrained(model, out_dir, tokenizer=tokenizer)
    rows = [{"layer": r.name, "in": r.in_features, "out": r.out_features, "rel. error": r.error,
             "seconds": r.seconds} for r in report]
    print(ev.markdown_table(rows, ["layer", "in", "out", "rel. error", "seconds"]))
    print(f"saved {len(report)} {what} layers to {out_dir}")


def _sparsify(args):
    import slimformer
    from slimformer import evaluate as ev

    _check_out_dir(args.model_dir, args.out_dir)
    if args.calib is not None:
        ev.read_text(args.calib)
    quantize = None if args.bits is None else slimformer.GPTQConfig(bits=args.bits, group_size=args.group_size)
    targets = args.targets if args.targets in ("ffn", "all") else args.targets.split(",")
    config = slimformer.Sparse24Config(method=args.method, n=args.n, m=args.m, targets=targets,
                                       modules_to_not_convert=args.skip or None, damp_percent=args.damp,
                                       asym_calibration=args.asym_calibration, asym_alpha=args.asym_alpha,
                                       quantize=quantize)
    model, tokenizer = ev.load_model(args.model_dir)
    calib = None if config.method == "magnitude" else _calibration(args, model, tokenizer, config.method)
    report = []
    model = slimformer.sparsify(model, config, calib, tokenizer=tokenizer, device=args.device, report=report)
    _save_and_report(model, tokenizer, args.out_dir, report, f"{config.n}:{config.m}")


def _quantize(args):
    import slimformer
    from slimformer import evaluate as ev

    _check_out_dir(args.model_dir, args.out_dir)
    if args.calib is not None:
        ev.read_text(args.calib)  # a missing, empty or binary file fails now, not after loading the model
    config = slimformer.GPTQConfig(bits=args.bits, group_size=args.group_size, desc_act=args.desc_act,
                                   sym=not args.asym, damp_percent=args.damp, static_groups=args.static_groups,
                                   true_sequential=not args.no_true_sequential, method=args.method,
                                   lm_head=args.lm_head, mse=args.mse, checkpoint_format=args.checkpoint_format,
                                   modules_to_not_convert=args.skip or None,
                                   asym_calibration=args.asym_calibration, asym_alpha=args.asym_alpha,
                                   asym_method=args.asym_method)
    model, tokenizer = ev.load_model(args.model_dir)
    calib = _calibration(args, model, tokenizer, "GPTQ (or use --method rtn)") if config.method == "gptq" else None
    report = []
    model = slimformer.quantize(model, config, calib, tokenizer=tokenizer, device=args.device, report=report)
    _save_and_report(model, tokenizer, args.out_dir, report, "quantized")


def _token_config(args):
    """The TokenPruneConfig of --prune-tokens / --keep / --r / --similarity / --matching, or None."""
    if args.prune_tokens is None:
        if args.keep is not None or args.r is not None:
            raise CliError("--keep and --r set how much --prune-tokens removes: pass --prune-tokens METHOD too")
        return None
    import slimformer
    if args.r is not None and args.keep is not None:
        raise CliError("pass one of --keep (FLOP fraction to keep) and --r (tokens removed per layer)")
    if args.prune_every != 1 and args.r is not None:
        raise CliError("--prune-every spreads the --keep FLOP target over every K-th layer; --r removes tokens at "
                       "every layer")
    amount = {"r": args.r} if args.r is not None else {"flops": 0.65 if args.keep is None else args.keep,
                                                        "every": args.prune_every}
    if args.matching != "bipartite" and args.prune_tokens != "tome":
        raise CliError("--matching chooses how ToMe pairs the tokens it merges: it needs --prune-tokens tome")
    return slimformer.TokenPruneConfig(method=args.prune_tokens, similarity=args.similarity, matching=args.matching,
                                       **amount)


def _prune_tokens(model, cfg, path):
    import slimformer
    from slimformer import evaluate as ev
    if ev.is_causal_lm(model.config):
        raise CliError(f"token pruning is for encoders (BERT family, ViT, DeiT); {path} is a causal LM")
    slimformer.prune_tokens(model, cfg)


def _eval(args):
    from slimformer import evaluate as ev

    text = ev.read_text(args.text)
    model, tokenizer = ev.load_model(args.model_dir)
    if tokenizer is None:
        raise CliError(f"{args.model_dir} has no tokenizer files")
    result = {"model": str(args.model_dir)}
    tokens_cfg = _token_config(args)
    if tokens_cfg is not None:
        _prune_tokens(model, tokens_cfg, args.model_dir)
        result["token_pruning"] = {"method": tokens_cfg.method, "flops": tokens_cfg.flops, "r": tokens_cfg.r,
                                   "every": tokens_cfg.every, "similarity": tokens_cfg.similarity,
                                   "matching": tokens_cfg.matching}
        if args.reference is None:
            args.reference = args.model_dir  # against the same model unpruned
    if ev.is_causal_lm(model.config):
        seqlen = _check_seqlen(model, args.seqlen, minimum=2)
        ids = ev.token_ids(tokenizer, text)
        if args.max_tokens:
            ids = ids[:args.max_tokens]
        result.update(metric="perplexity: exp(mean next-token negative log-likelihood) over non-overlapping windows "
                             "of seqlen tokens (lower is better)",
                      perplexity=ev.perplexity(model, ids, seqlen), tokens=int(ids.numel()), seqlen=seqlen)
    else:
        if args.reference is None:
            raise CliError("encoders are evaluated by embedding fidelity: pass --reference DENSE_MODEL_DIR")
        reference, _ = ev.load_model(args.reference)
        for key in ("hidden_size", "vocab_size", "model_type"):
            mine, theirs = getattr(model.config, key, None), getattr(reference.config, key, None)
            if mine != theirs:
                raise CliError(f"--reference {args.reference} is not the same model: {key} {theirs} vs {mine} in "
                               f"{args.model_dir}")
        sents = ev.sentences(text)[: args.max_sentences]
        if not sents:
            raise CliError(f"no sentences of 5-60 words found in {args.text}")
        result.update(reference=str(args.reference),
                      metric="cosine similarity between each sentence's mean-pooled, L2-normalized embedding from "
                             "the model and from the reference (1 = identical)")
        result.update(ev.embedding_fidelity(model, reference, tokenizer, sents, progress=True))
        if tokens_cfg is not None:
            import slimformer
            result["token_pruning"]["flops_fraction_last_batch"] = \
                slimformer.token_pruning_report(model)["flops_fraction"]
    print(json.dumps(result, indent=2))
    return result


def _bench(args):
    import torch

    from slimformer import evaluate as ev

    tokens_cfg = _token_config(args)
    models = [("compressed" if ev.is_quantized_checkpoint(args.model_dir) else "model", args.model_dir, None)]
    if args.reference:
        models.insert(0, ("dense", args.reference, None))
    elif tokens_cfg is not None:
        models.insert(0, ("model", args.model_dir, None))
    if tokens_cfg is not None:
        what = f"r={tokens_cfg.r}" if tokens_cfg.r is not None else f"FLOPs {tokens_cfg.flops}"
        if tokens_cfg.every != 1:
            what += f", every {tokens_cfg.every} layers"
        models[-1] = (f"{models[-1][0]} + {tokens_cfg.method} ({what})", args.model_dir, tokens_cfg)
    rows = []
    for label, path, cfg in models:
        model, _ = ev.load_model(path)
        if cfg is not None:
            _prune_tokens(model, cfg, path)
        _check_seqlen(model, args.seqlen + (16 + args.new_tokens if ev.is_causal_lm(model.config) else 0),
                      "--seqlen (plus the decode test's 16 + --new-tokens for causal LMs)")
        vocab = getattr(model.config, "vocab_size", 1000)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (args.batch, args.seqlen), generator=g)
        row = {"model": label, "path": str(path)}
        prefill = ev.time_forward(model, {"input_ids": ids})
        row["sequences/s"] = args.batch / prefill
        if ev.is_causal_lm(model.config):
            row["decode tokens/s"] = 1.0 / ev.time_decode(model, ids[:1, :16], args.new_tokens)
        if cfg is not None:
            import slimformer
            row["FLOP fraction"] = slimformer.token_pruning_report(model)["flops_fraction"]
        rows.append(row)
        print(f"{label}: {row}", file=sys.stderr)
    if len(rows) == 2:
        for key in ("sequences/s", "decode tokens/s"):
            if key in rows[0]:
                rows[1][f"{key} speedup"] = rows[1][key] / rows[0][key]
    cols = [c for c in ("model", "sequences/s", "sequences/s speedup", "decode tokens/s", "decode tokens/s speedup",
                        "FLOP fraction") if any(c in r for r in rows)]
    print(f"batch {args.batch} x {args.seqlen} tokens, torch threads {torch.get_num_threads()}")
    print(ev.markdown_table(rows, cols))
    if args.json:
        import platform
        import time

        from slimformer import ops
        meta = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                "cpu_features": ops.cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                "batch": args.batch, "seqlen": args.seqlen, "new_tokens": args.new_tokens}
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    return rows


def _token_args(p):
    from slimformer.tokens import METHODS
    p.add_argument("--prune-tokens", choices=METHODS, default=None,
                   help="prune or merge tokens inside the encoder (BERT family, ViT, DeiT) with this method")
    p.add_argument("--keep", type=float, default=None,
                   help="with --prune-tokens: fraction of the encoder's FLOPs to keep (default 0.65)")
    p.add_argument("--r", type=int, default=None, help="with --prune-tokens: tokens removed per layer instead")
    p.add_argument("--prune-every", type=int, default=1, metavar="K",
                   help="with --prune-tokens --keep: cut only every K-th layer (fewer, larger cuts; default 1: all)")
    p.add_argument("--similarity", choices=["keys", "hidden"], default="keys",
                   help="with --prune-tokens: what ToMe / Zero-TPrune compare (default keys, as the papers)")
    p.add_argument("--matching", choices=["bipartite", "greedy"], default="bipartite",
                   help="with --prune-tokens tome: pairs across ToMe's alternating split (default, as the paper) or "
                        "chosen greedily (better sentence embeddings on MiniLM)")


def _calibration_args(p, calib_help: str):
    p.add_argument("--calib", type=Path, help=calib_help)
    p.add_argument("--nsamples", type=_positive_int, default=128,
                   help="calibration windows (causal LMs) or sentences (encoders)")
    p.add_argument("--seqlen", type=_positive_int, default=512, help="tokens per calibration window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--damp", type=float, default=0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slimformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the build, the CPU features and the kernel path in use")

    q = sub.add_parser("quantize", help="GPTQ/RTN-quantize a Hugging Face model directory into a GPTQ checkpoint")
    q.add_argument("model_dir", type=Path)
    q.add_argument("out_dir", type=Path)
    q.add_argument("--bits", type=int, default=4)
    q.add_argument("--group-size", type=int, default=128, help="-1 for per-channel")
    q.add_argument("--desc-act", action="store_true", help="act-order: columns by descending Hessian diagonal")
    q.add_argument("--static-groups", action="store_true")
    q.add_argument("--asym", action="store_true", help="asymmetric grid (default symmetric)")
    q.add_argument("--method", choices=["gptq", "rtn"], default="gptq")
    _calibration_args(q, "calibration text file (UTF-8)")
    q.add_argument("--mse", action="store_true", help="MSE shrink search for each group's grid")
    q.add_argument("--asym-calibration", action="store_true",
                   help="GPTQv2: match each layer to the full-precision model's outputs")
    q.add_argument("--asym-alpha", type=float, default=0.25, help="weight of GPTQv2's asymmetry correction")
    q.add_argument("--asym-method", choices=["gptqv2", "lstsq"], default="gptqv2",
                   help="published GPTQv2 update, or GPTQ toward the least-squares full-precision target")
    q.add_argument("--no-true-sequential", action="store_true")
    q.add_argument("--lm-head", action="store_true", help="also quantize the output projection")
    q.add_argument("--skip", action="append", help="module name pattern to keep dense (repeatable)")
    q.add_argument("--checkpoint-format", choices=["gptq", "gptq_v2"], default=None,
                   help="zero-point storage: default v1 ('gptq') for symmetric, gptq_v2 for --asym")
    q.add_argument("--device", default=None, help="where blocks are processed (e.g. cuda); default: cpu")

    s = sub.add_parser("sparsify", help="prune a Hugging Face model directory to N:M (2:4) sparsity: a "
                                        "compressed-tensors sparse-24-bitmask checkpoint")
    s.add_argument("model_dir", type=Path)
    s.add_argument("out_dir", type=Path)
    s.add_argument("--method", choices=["sparsegpt", "wanda", "magnitude"], default="sparsegpt")
    s.add_argument("--n", type=_positive_int, default=2, help="weights kept of every M")
    s.add_argument("--m", type=_positive_int, default=4)
    s.add_argument("--targets", default="ffn",
                   help="'ffn' (feed-forward linears, the default), 'all', or comma-separated name patterns")
    s.add_argument("--skip", action="append", help="module name pattern to keep dense (repeatable)")
    _calibration_args(s, "calibration text file (UTF-8); not needed for magnitude")
    s.add_argument("--asym-calibration", action="store_true",
                   help="SparseGPT toward the full-precision model's outputs (GPTQv2-style asymmetric calibration)")
    s.add_argument("--asym-alpha", type=float, default=0.25, help="strength of the asymmetric correction")
    s.add_argument("--bits", type=int, default=None,
                   help="also quantize the kept weights with GPTQ in the same pass (SparseGPT only); 4 gives "
                        "packed 2:4 + int4 layers")
    s.add_argument("--group-size", type=int, default=128)
    s.add_argument("--device", default=None, help="where blocks are processed (e.g. cuda); default: cpu")

    e = sub.add_parser("eval", help="perplexity (causal LMs) or embedding fidelity to a reference (encoders)")
    e.add_argument("model_dir", type=Path)
    e.add_argument("--text", type=Path, required=True)
    e.add_argument("--reference", type=Path, help="dense model directory (encoders)")
    e.add_argument("--seqlen", type=_positive_int, default=512)
    e.add_argument("--max-tokens", type=_positive_int, default=None)
    e.add_argument("--max-sentences", type=_positive_int, default=1000)
    _token_args(e)

    b = sub.add_parser("bench", help="forward throughput (and decode tokens/s for LMs), dense vs compressed")
    b.add_argument("model_dir", type=Path)
    b.add_argument("--reference", type=Path, help="dense model directory to compare with")
    b.add_argument("--batch", type=_positive_int, default=1)
    b.add_argument("--seqlen", type=_positive_int, default=128)
    b.add_argument("--new-tokens", type=_positive_int, default=32)
    b.add_argument("--json", type=Path, help="also write the rows (and the machine) to this JSON file")
    _token_args(b)

    args = parser.parse_args(argv)
    try:
        {"info": _info, "quantize": _quantize, "sparsify": _sparsify, "eval": _eval,
         "bench": _bench}[args.command](args)
    except (CliError, FileNotFoundError, NotADirectoryError, ValueError, TypeError) as e:
        print(f"slimformer {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
