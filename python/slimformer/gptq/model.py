"""Whole-model GPTQ: slimformer.quantize(model, config, calibration_data).

GPTQ and RTN are two compressors of the calibration engine (slimformer.hf.calibrate): GPTQ collects each layer's
Hessian (and, with asym_calibration, GPTQv2's cross term against the full-precision model) block by block, in
execution order; RTN needs no data. Both touch the same layers: the linears inside the repeated blocks, minus
modules_to_not_convert, plus the output head with lm_head=True."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..hf.calibrate import LayerCompressor, LayerReport, Targets, run_layerwise  # noqa: F401 (LayerReport re-exported)
from ..hf.swap import is_linear_like, linear_weight
from ..hessian import HessianAccumulator
from .algorithm import gptq, round_to_nearest
from .config import GPTQConfig
from .module import QuantLinear


def _bias(module: nn.Module):
    b = getattr(module, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else None


class GPTQCompressor(LayerCompressor):
    """GPTQ (GPTQv2 with config.asym_calibration) or RTN, as config.method says, for the calibration engine."""
    method = "gptq"

    def __init__(self, config: GPTQConfig):
        self.config = config
        self.method = config.method
        self.statistic = HessianAccumulator if config.method == "gptq" else None
        self.asymmetric = config.asym_calibration
        self.true_sequential = config.true_sequential
        self.targets = Targets(exclude=tuple(config.modules_to_not_convert or ()), lm_head=config.lm_head,
                               block_name=config.block_name_to_quantize)
        self.progress_label = f"{'GPTQ' if config.method == 'gptq' else 'RTN'} int{config.bits}"

    def compress(self, name, module, acc):
        c = self.config
        weight = linear_weight(module).detach()
        if acc is None:
            q, scales, zeros = round_to_nearest(weight, c.bits, c.group_size, c.sym, mse=c.mse)
            g_idx, err, damp = None, float("nan"), 0.0
        else:
            r = gptq(weight, acc.hessian, bits=c.bits, group_size=c.group_size, sym=c.sym, act_order=c.desc_act,
                     static_groups=c.static_groups, damp=c.damp_percent, block_size=c.block_size, mse=c.mse,
                     asym_cross=acc.cross, asym_alpha=c.asym_alpha, asym_method=c.asym_method)
            q, scales, zeros, g_idx, err, damp = r.q, r.scales, r.zeros, r.g_idx, r.error, r.damp
        layer = QuantLinear.from_int(q, scales, zeros, g_idx, _bias(module), bits=c.bits, group_size=c.group_size,
                                     sym=c.sym, checkpoint_format=c.checkpoint_format or "gptq")
        return layer, {"error": err, "bits": c.bits, "damp": damp}

    def before_head(self, model, name):
        if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
            # the head shares its weight with the input embedding: give it its own copy before replacing it
            model.config.tie_word_embeddings = False


def calibration_batches(calibration_data, tokenizer=None, max_length: int | None = None,
                        vocab_size: int | None = None) -> list[dict]:
    """Model-input dicts from a list of strings (tokenized one by one) or an iterable of dicts. Blank strings are
    skipped with a warning; token ids outside [0, vocab_size) are refused."""
    if calibration_data is None:
        raise ValueError("calibration_data is required for method='gptq' (a list of strings with a tokenizer, or "
                         "model-input dicts); use GPTQConfig(method='rtn') to quantize without data")
    if isinstance(calibration_data, (str, dict)):
        calibration_data = [calibration_data]
    batches, blank = [], []
    for i, item in enumerate(calibration_data):
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("calibration_data holds strings: pass tokenizer= to tokenize them")
            if not item.strip():
                blank.append(i)
                continue
            enc = tokenizer(item, return_tensors="pt", truncation=max_length is not None, max_length=max_length)
            batches.append(dict(enc))
        elif isinstance(item, dict) or hasattr(item, "keys"):
            b = {}
            for k in item.keys():
                v = item[k]
                if isinstance(v, torch.Tensor) and v.dim() == 1 and k in ("input_ids", "attention_mask",
                                                                          "token_type_ids", "position_ids"):
                    v = v.unsqueeze(0)
                if isinstance(v, torch.Tensor) and max_length is not None and v.dim() >= 2 and k != "pixel_values":
                    v = v[:, :max_length]
                b[k] = v
            batches.append(b)
        else:
            raise TypeError(f"calibration_data items must be str or dict of model inputs, got {type(item).__name__}")
    empty = len(batches)
    batches = [b for b in batches if not ("input_ids" in b and b["input_ids"].numel() == 0)]
    empty -= len(batches)
    if not batches:
        raise ValueError(f"calibration_data is empty: GPTQ needs at least one non-empty sample (got {len(blank)} "
                         f"blank strings and {empty} samples without tokens)")
    if blank or empty:
        warnings.warn(f"calibration_data: skipped {len(blank)} empty or whitespace-only strings "
                      f"{blank[:8]} and {empty} samples that tokenize to nothing", RuntimeWarning, stacklevel=3)
    if vocab_size is not None:
        for i, b in enumerate(batches):
            ids = b.get("input_ids")
            if isinstance(ids, torch.Tensor) and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                raise ValueError(f"calibration sample {i} has token ids in [{int(ids.min())}, {int(ids.max())}], "
                                 f"outside the model's vocabulary [0, {vocab_size})")
    return batches


@torch.no_grad()
def quantize(model: nn.Module, config: GPTQConfig | None = None, calibration_data=None, tokenizer=None, *,
             device=None, progress: bool = True, report: list | None = None) -> nn.Module:
    """Quantizes the linear layers of a Hugging Face model's blocks in place with GPTQ (or RTN) and returns the
    model. report: a list that receives one LayerReport per quantized layer (name, shapes, error, seconds, ...).

    calibration_data: a list of strings (tokenized with `tokenizer`) or an iterable of model-input dicts
    (input_ids/attention_mask, or pixel_values for ViT); token sequences are cut to config.model_seqlen, else to
    the model's max_position_embeddings. device: where each block is processed (default: where the model is);
    activations stay on the CPU between blocks.

    config.asym_calibration (GPTQv2) also carries the full-precision model's hidden states from block to block
    and a dense copy of the block being quantized: twice the activations and one more block in memory.

    On error the model is left as it was (every replaced layer is restored)."""
    config = config or GPTQConfig()
    if not isinstance(config, GPTQConfig):
        raise TypeError(f"config must be a slimformer.GPTQConfig, got {type(config).__name__}")
    if not any(is_linear_like(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear (or Conv1D) layers to quantize")
    batches = None
    if config.method == "gptq":
        max_length = config.model_seqlen or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        try:
            embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        except NotImplementedError:
            embeddings = None
        vocab = getattr(embeddings, "num_embeddings", None)
        batches = calibration_batches(calibration_data, tokenizer, max_length, vocab)
    rows = run_layerwise(model, GPTQCompressor(config), batches, device=device, progress=progress)
    if hasattr(model, "config"):
        model.config.quantization_config = config.to_dict()
    if report is not None:
        report.extend(rows)
    return model
