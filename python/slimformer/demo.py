"""`make demo`: quantize a small LLaMA-shaped transformer (built from a config, random weights: no model hub is
needed) to GPTQ-format int4 and int3 with round-to-nearest, prune its feed-forward linears to 2:4 (magnitude, bf16
values; and 2:4 + int4), and compare outputs, size and speed with the dense model.

    python -m slimformer.demo [--hidden 1024] [--layers 4] [--bits 4 3]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from . import QuantLinear, Sparse24Linear, Sparse24QuantLinear, ops, replace_linear


def build_model(hidden: int, layers: int, vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4 // 32 * 32, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab,
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def linear_bytes(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, (QuantLinear, Sparse24Linear, Sparse24QuantLinear)):
            total += sum(t.numel() * t.element_size() for t in m.state_dict().values())
        elif isinstance(m, nn.Linear) and m.out_features != model.config.vocab_size:
            total += sum(p.numel() * p.element_size() for p in m.parameters())
    return total


def time_ms(fn, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the table (and the machine) to this JSON file")
    args = p.parse_args(argv)

    dense = build_model(args.hidden, args.layers, args.vocab)
    print(f"model: LLaMA-shaped, hidden {args.hidden}, {args.layers} layers, "
          f"{sum(p.numel() for p in dense.parameters()) / 1e6:.1f}M parameters (random init)")
    print(f"slimformer kernels: {'native, CPU path ' + ops.cpu_isa() if ops.HAS_NATIVE else 'pure-PyTorch fallback'}, "
          f"{torch.get_num_threads()} threads")
    torch.manual_seed(1)
    prompt = torch.randint(0, args.vocab, (1, args.prompt_len))
    token = prompt[:, :1]

    variants = [("dense fp32", dense, None)]
    for bits in args.bits:
        q = copy.deepcopy(dense)
        replace_linear(q, lambda name, lin, b=bits: QuantLinear.from_linear(lin, bits=b, group_size=args.group_size),
                       progress=True)
        # The same model with each quantized weight dequantized into a dense nn.Linear: what the kernels must match.
        deq = copy.deepcopy(dense)
        for name, m in q.named_modules():
            if isinstance(m, QuantLinear):
                deq.get_submodule(name).weight.data = m.dequantize().to(torch.float32)
        variants.append((f"int{bits} g{args.group_size}", q, deq))
    dense_bf16 = copy.deepcopy(dense).to(torch.bfloat16)
    variants.append(("dense bf16", dense_bf16, None))
    # 2:4 feed-forward linears (magnitude; quality comes from SparseGPT on real models: the README's 2:4 tables)
    sparse = copy.deepcopy(dense_bf16)
    replace_linear(sparse, lambda name, lin: Sparse24Linear.from_linear(lin, dtype=torch.bfloat16),
                   include=("*.mlp.*",), progress=True)
    deq = copy.deepcopy(dense_bf16)
    for name, m in sparse.named_modules():
        if isinstance(m, Sparse24Linear):
            deq.get_submodule(name).weight.data = m.to_dense()
    variants.append(("2:4 FFN bf16", sparse, deq))
    # 2:4 + int4 feed-forward linears (magnitude mask, round-to-nearest codes; bf16 activations)
    sparse4 = copy.deepcopy(dense_bf16)
    replace_linear(sparse4, lambda name, lin: Sparse24QuantLinear.from_dense(lin.weight, bias=lin.bias,
                                                                             group_size=args.group_size),
                   include=("*.mlp.*",), progress=True)
    deq = copy.deepcopy(dense_bf16)
    for name, m in sparse4.named_modules():
        if isinstance(m, Sparse24QuantLinear):
            deq.get_submodule(name).weight.data = m.to_dense().to(torch.bfloat16)
    variants.append(("2:4+int4 FFN", sparse4, deq))

    with torch.inference_mode():
        ref = dense(prompt).logits.float()
        rows = []
        for name, model, deq in variants:
            logits = model(prompt).logits.float()
            err = ((logits - ref).norm() / ref.norm()).item()
            kernel_err = float("nan")
            if deq is not None:  # both kernel paths: the fused small-M one (8 tokens) and the tiled one (prompt)
                kernel_err = 0.0
                for ids in (prompt[:, :8], prompt):
                    got, want = model(ids).logits.float(), deq(ids).logits.float()
                    kernel_err = max(kernel_err, ((got - want).norm() / want.norm()).item())
            top1 = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
            decode = time_ms(lambda m=model: m(token), args.reps)
            prefill = time_ms(lambda m=model: m(prompt), max(2, args.reps // 2))
            rows.append((name, linear_bytes(model) / 2**20, kernel_err, err, top1, decode, prefill))

    base_decode, base_prefill = rows[0][5], rows[0][6]
    print(f"\n{'variant':<14}{'linear MiB':>11}{'kernel err':>12}{'logit rel err':>15}{'top-1 agree':>13}"
          f"{'1-token ms':>12}{'speedup':>9}{f'{args.prompt_len}-token ms':>15}{'speedup':>9}")
    for name, mib, kernel_err, err, top1, decode, prefill in rows:
        kerr = "-" if kernel_err != kernel_err else f"{kernel_err:.1e}"
        print(f"{name:<14}{mib:>11.1f}{kerr:>12}{err:>15.4f}{top1:>13.3f}{decode:>12.2f}{base_decode / decode:>8.2f}x"
              f"{prefill:>15.1f}{base_prefill / prefill:>8.2f}x")
    if args.json:
        import json
        import platform
        import time
        meta = {"date": time.strftime("%Y-%m-%d"), "cpu": platform.processor() or platform.machine(),
                "cpu_features": ops.cpu_features(), "isa": ops.cpu_isa(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                "prompt_len": args.prompt_len, "reps": args.reps}
        keys = ("variant", "linear_mib", "kernel_err", "logit_rel_err", "top1_agree", "decode_ms", "prefill_ms")
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [dict(zip(keys, r)) for r in rows]}, f, indent=2, default=str)
            f.write("\n")
    print("\nkernel err: logits vs. the dense model holding the same dequantized weights (the kernels' exactness).\n"
          "logit rel err / top-1 agree: vs. the fp32 model; with random weights this is rounding noise on near-flat\n"
          "logits, not task quality (GPTQ and 2:4 on trained models: the README's quality tables). lm_head, embeddings\n"
          "and norms stay dense; the 2:4 rows run bf16 activations (their kernel err: vs. bf16 dense with the same\n"
          "weights and zeros, so bf16 rounding).")


if __name__ == "__main__":
    main()
