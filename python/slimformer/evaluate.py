"""Loading, calibration, quality and speed measurements shared by the CLI and the evaluation scripts.

- perplexity: causal LMs, over non-overlapping windows of `seqlen` tokens (every token predicted once);
- embedding_fidelity: sentence encoders, cosine between the mean-pooled embeddings of a compressed and a
  reference model on the same sentences;
- benchmark_model: forward latency of a model, dense vs compressed, as a table row."""
from __future__ import annotations

import json
import math
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm


def is_quantized_checkpoint(path) -> bool:
    path = Path(path)
    if (path / "quantize_config.json").exists():
        return True
    cfg = path / "config.json"
    return cfg.exists() and "quantization_config" in json.loads(cfg.read_text())


def is_causal_lm(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)


def load_model(path, *, dtype=torch.float32):
    """A dense Hugging Face model directory (safetensors) or a GPTQ checkpoint, with its tokenizer if it has one."""
    import transformers

    from .hf.checkpoint import CheckpointError, load_pretrained, resolve_model_class, weight_files
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; a model directory was expected")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json: not a Hugging Face model directory")
    if is_quantized_checkpoint(path):
        model = load_pretrained(path, dtype=dtype)
    else:
        weight_files(path)  # refuses pickle-only directories with a clear error
        config = transformers.AutoConfig.from_pretrained(str(path))
        cls = resolve_model_class(config)
        if cls is transformers.AutoModel and is_causal_lm(config):
            cls = transformers.AutoModelForCausalLM
        model = cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True).eval()
    tokenizer = None
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
    return model, tokenizer


def read_text(path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file (a text file was expected)")
    data = path.read_bytes()
    if b"\x00" in data:
        raise ValueError(f"{path} holds NUL bytes: a UTF-8 text file was expected, not a binary one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text.strip():
        raise ValueError(f"text file {path} is empty")
    return text


def token_ids(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"][0]
    if ids.numel() == 0:
        raise ValueError("the text tokenizes to no tokens")
    return ids


def calibration_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0) -> list[dict]:
    """nsamples random windows of seqlen tokens (GPTQ's calibration recipe); the whole text when it is shorter."""
    if ids.numel() <= seqlen:
        return [{"input_ids": ids[None].clone()}]
    rng = random.Random(seed)
    starts = [rng.randrange(0, ids.numel() - seqlen) for _ in range(nsamples)]
    return [{"input_ids": ids[s:s + seqlen][None].clone()} for s in starts]


@torch.no_grad()
def perplexity(model: nn.Module, ids: torch.Tensor, seqlen: int, *, progress: bool = True) -> float:
    """exp(mean next-token NLL) over non-overlapping windows of seqlen tokens."""
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least two tokens")
    nll, count = 0.0, 0
    windows = range(0, ids.numel() - 1, seqlen)
    for start in tqdm(windows, desc="perplexity", disable=not progress):
        chunk = ids[start:start + seqlen][None]
        if chunk.shape[1] < 2:
            break
        logits = model(input_ids=chunk, use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        nll += loss.item()
        count += chunk.shape[1] - 1
    return math.exp(nll / count)


def sentences(text: str, *, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Plain-prose sentences from a text: split on sentence ends, keep those of a sensible length."""
    import re
    parts = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    return [p for p in parts if min_words <= len(p.split()) <= max_words]


def sample_sentences(text: str, n: int, rng: random.Random) -> list[str]:
    """n sentences of text (see sentences) in an order shuffled by rng; fewer when the text has fewer."""
    found = sentences(text)
    rng.shuffle(found)
    return found[:n]


@torch.no_grad()
def embed(model: nn.Module, tokenizer, texts: list[str], *, batch_size: int = 32, max_length: int = 256,
          progress: bool = False) -> torch.Tensor:
    """Mean-pooled, L2-normalized sentence embeddings (the sentence-transformers recipe for MiniLM)."""
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc="embedding", disable=not progress):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        h = model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * mask).sum(1) / mask.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(out)


def embedding_fidelity(model, reference, tokenizer, texts: list[str], *, progress: bool = False) -> dict:
    """Cosine between each sentence's embedding from model and from reference: mean, min, 5th percentile."""
    if not texts:
        raise ValueError("embedding_fidelity needs at least one sentence")
    a = embed(model, tokenizer, texts, progress=progress)
    b = embed(reference, tokenizer, texts, progress=progress)
    cos = (a * b).sum(-1)
    return {"mean_cosine": cos.mean().item(), "min_cosine": cos.min().item(),
            "p05_cosine": torch.quantile(cos, 0.05).item(), "sentences": len(texts)}


@torch.no_grad()
def time_forward(model: nn.Module, batch: dict, *, warmup: int = 2, repeat: int = 7) -> float:
    """Median seconds of one forward pass."""
    for _ in range(warmup):
        model(**batch)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> float:
    """Seconds per generated token, greedy, with the KV cache (the prompt's prefill not counted)."""
    out = model(input_ids=prompt, use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / new_tokens


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
