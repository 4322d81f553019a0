"""Whole-model GPTQ: slimformer.quantize(model, config, calibration_data).

Block by block, as GPTQ was published for transformers: the inputs of the first block (a ModuleList of layers)
are captured by running the model until that block; then for each block, hooks accumulate the Hessian of every
linear layer over all calibration inputs, the layers are quantized (group by group in execution order when
true_sequential), and the quantized block is re-run to give the next block its inputs. Only one block's
activations are alive at a time, and they are kept on the CPU; with device="cuda" each block is moved there,
processed and moved back."""
from __future__ import annotations

import copy
import fnmatch
import inspect
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..hf.swap import is_linear_like, linear_weight
from .algorithm import HessianAccumulator, gptq, round_to_nearest
from .config import GPTQConfig
from .module import QuantLinear


@dataclass
class LayerReport:
    name: str
    in_features: int
    out_features: int
    bits: int
    error: float  # relative output error on the calibration inputs (nan for RTN without calibration)
    damp: float
    seconds: float


class _Stop(Exception):
    pass


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def find_blocks(model: nn.Module, name: str | None = None) -> tuple[str, nn.ModuleList]:
    """The repeated transformer blocks: `name` if given, else the ModuleList holding the most linear weights
    (model.layers in LLaMA/Mistral/Qwen2, decoder.layers in OPT, transformer.h in GPT-2, encoder.layer in
    BERT and ViT)."""
    if name is not None:
        try:
            blocks = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"block_name_to_quantize={name!r} is not a submodule of {type(model).__name__}") from None
        if not isinstance(blocks, nn.ModuleList):
            raise ValueError(f"{name!r} is a {type(blocks).__name__}, expected the nn.ModuleList of blocks")
        return name, blocks
    best, best_count = None, 0
    for n, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            count = sum(linear_weight(sub).numel() for sub in m.modules() if is_linear_like(sub))
            if count > best_count:
                best, best_count = (n, m), count
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of blocks with linear layers; pass "
                         "GPTQConfig(block_name_to_quantize=...)")
    return best


def _skip(name: str, config: GPTQConfig) -> bool:
    pats = config.modules_to_not_convert or []
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.rsplit(".", 1)[-1], p) for p in pats)


def _set_module(root: nn.Module, name: str, module: nn.Module):
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _bias(module: nn.Module):
    b = getattr(module, "bias", None)
    return b.detach() if isinstance(b, torch.Tensor) else None


def _quantize_layer(module: nn.Module, acc: HessianAccumulator | None, config: GPTQConfig):
    """Returns (QuantLinear, error, damp) for one nn.Linear / Conv1D; acc is None for RTN."""
    weight = linear_weight(module).detach()
    if acc is None:
        q, scales, zeros = round_to_nearest(weight, config.bits, config.group_size, config.sym, mse=config.mse)
        g_idx, err, damp = None, float("nan"), 0.0
    else:
        r = gptq(weight, acc.hessian, bits=config.bits, group_size=config.group_size, sym=config.sym,
                 act_order=config.desc_act, static_groups=config.static_groups, damp=config.damp_percent,
                 block_size=config.block_size, mse=config.mse, asym_cross=acc.cross, asym_alpha=config.asym_alpha,
                 asym_method=config.asym_method)
        q, scales, zeros, g_idx, err, damp = r.q, r.scales, r.zeros, r.g_idx, r.error, r.damp
    layer = QuantLinear.from_int(q, scales, zeros, g_idx, _bias(module), bits=config.bits,
                                 group_size=config.group_size, sym=config.sym,
                                 checkpoint_format=config.checkpoint_format)
    return layer, err, damp


def calibration_batches(calibration_data, tokenizer=None, max_length: int | None = None) -> list[dict]:
    """Model-input dicts from a list of strings (tokenized one by one) or an iterable of dicts."""
    if calibration_data is None:
        raise ValueError("calibration_data is required for method='gptq' (a list of strings with a tokenizer, or "
                         "model-input dicts); use GPTQConfig(method='rtn') to quantize without data")
    if isinstance(calibration_data, (str, dict)):
        calibration_data = [calibration_data]
    batches = []
    for item in calibration_data:
        if isinstance(item, str):
            if tokenizer is None:
                raise ValueError("calibration_data holds strings: pass tokenizer= to tokenize them")
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
    batches = [b for b in batches if not ("input_ids" in b and b["input_ids"].numel() == 0)]
    if not batches:
        raise ValueError("calibration_data is empty: GPTQ needs at least one non-empty sample")
    return batches


def _capture_block_inputs(model, first_block, batches, device):
    """Runs the model on each batch up to the first block; returns [(args, kwargs)] on the CPU."""
    captured = []

    def hook(module, args, kwargs):
        captured.append((_to(args, "cpu"), _to(kwargs, "cpu")))
        raise _Stop

    accepts = inspect.signature(model.forward).parameters
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            extra = {"use_cache": False} if "use_cache" in accepts else {}
            try:
                model(**_to(batch, device), **extra)
            except _Stop:
                continue
            raise RuntimeError("the model's forward finished without reaching its first block; is "
                               "block_name_to_quantize right?")
    finally:
        handle.remove()
    return captured


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, h):
    if args:
        return (h,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": h}


def _run_one(block, args, kwargs, device):
    out = block(*_to(args, device), **_to(kwargs, device))
    return out[0] if isinstance(out, (tuple, list)) else out


def _run_block(block, inputs, device):
    """Runs block on every captured input; returns the outputs' hidden states on the CPU."""
    return [_run_one(block, args, kwargs, device).to("cpu") for args, kwargs in inputs]


def _accumulate(block, names, inputs, device, fp=None):
    """Hessian accumulators of the named linear layers of block over all inputs; also returns the order they
    first ran in, each with the input tensor it got (kept alive, so that identity tells which layers share an
    input).

    fp = (full-precision copy of the block, the full-precision model's hidden states for each input) turns on
    GPTQv2's asymmetric calibration: each sample first runs through the dense copy, whose layer inputs are kept
    to accumulate the cross term against the quantized block's inputs on the same sample."""
    acc, order, handles = {}, [], []
    fp_x: dict[str, list] = {name: [] for name in names}
    for name in names:
        module = block.get_submodule(name)

        def hook(mod, args, name=name):
            x = args[0]
            if name not in acc:
                acc[name] = HessianAccumulator(x.shape[-1], device=x.device, asymmetric=fp is not None)
                order.append((name, x))
            ref = None
            if fp is not None:
                if not fp_x[name]:
                    raise RuntimeError(f"{name} ran more often in the quantized block than in its full-precision "
                                       "copy; asymmetric calibration cannot pair their inputs")
                ref = fp_x[name].pop(0)
            acc[name].add(x, ref)

        handles.append(module.register_forward_pre_hook(hook))
        if fp is not None:
            handles.append(fp[0].get_submodule(name).register_forward_pre_hook(
                lambda mod, args, name=name: fp_x[name].append(args[0])))
    try:
        for i, (args, kwargs) in enumerate(inputs):
            if fp is not None:
                _run_one(fp[0], *_with_hidden(args, kwargs, fp[1][i]), device)
            _run_one(block, args, kwargs, device)
            if fp is not None:
                for pending in fp_x.values():
                    pending.clear()
    finally:
        for h in handles:
            h.remove()
    return acc, order


def _sequential_groups(order):
    """Groups consecutive layers that read the same input tensor (q/k/v, gate/up), in execution order."""
    groups = []
    for name, x in order:
        if groups and groups[-1][1] is x:
            groups[-1][0].append(name)
        else:
            groups.append(([name], x))
    return [g for g, _ in groups]


@torch.no_grad()
def quantize(model: nn.Module, config: GPTQConfig | None = None, calibration_data=None, tokenizer=None, *,
             device=None, progress: bool = True, return_report: bool = False):
    """Quantizes the linear layers of a Hugging Face model's blocks in place with GPTQ (or RTN) and returns
    the model (and, with return_report=True, the per-layer [LayerReport]).

    calibration_data: a list of strings (tokenized with `tokenizer`) or an iterable of model-input dicts
    (input_ids/attention_mask, or pixel_values for ViT); token sequences are cut to config.model_seqlen, else to
    the model's max_position_embeddings. device: where each block is processed (default: where the model is);
    activations stay on the CPU between blocks.

    config.asym_calibration (GPTQv2) also carries the full-precision model's hidden states from block to block
    and a dense copy of the block being quantized: twice the activations and one more block in memory."""
    config = config or GPTQConfig()
    if not isinstance(config, GPTQConfig):
        raise TypeError(f"config must be a slimformer.GPTQConfig, got {type(config).__name__}")
    if not any(is_linear_like(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear (or Conv1D) layers to quantize")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    block_path, blocks = find_blocks(model, config.block_name_to_quantize)
    report: list[LayerReport] = []
    was_training = model.training
    model.eval()

    if config.method == "rtn":
        head = _head_name(model)
        targets = [(n, m) for n, m in model.named_modules() if is_linear_like(m) and not _skip(n, config)
                   and (config.lm_head or n != head)]
        for name, module in tqdm(targets, desc="RTN", disable=not progress):
            t0 = time.perf_counter()
            layer, err, damp = _quantize_layer(module, None, config)
            _set_module(model, name, layer)
            report.append(LayerReport(name, layer.in_features, layer.out_features, config.bits, err, damp,
                                      time.perf_counter() - t0))
    else:
        max_length = config.model_seqlen or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        batches = calibration_batches(calibration_data, tokenizer, max_length)
        inputs = _capture_block_inputs(model, blocks[0], batches, home)
        fp_hidden = [_hidden(args, kwargs) for args, kwargs in inputs] if config.asym_calibration else None
        bar = tqdm(range(len(blocks)), desc=f"GPTQ int{config.bits}", disable=not progress)
        for b in bar:
            block = blocks[b].to(device)
            fp_block = copy.deepcopy(block) if fp_hidden is not None else None
            prefix = f"{block_path}.{b}"
            names = [n for n, m in block.named_modules() if is_linear_like(m) and not _skip(f"{prefix}.{n}", config)]
            if names:
                if config.true_sequential:  # learn the execution order on one sample, then group by group
                    _, order = _accumulate(block, names, inputs[:1], device)
                    groups = _sequential_groups(order)
                    del order
                else:
                    groups = [names]
                for group in groups:
                    # collected after the earlier groups are quantized, so each sees its real inputs
                    hessians, _ = _accumulate(block, group, inputs, device,
                                              None if fp_block is None else (fp_block, fp_hidden))
                    for name in group:
                        if name not in hessians:
                            warnings.warn(f"{prefix}.{name} never ran on the calibration data; left dense",
                                          RuntimeWarning, stacklevel=2)
                            continue
                        t0 = time.perf_counter()
                        layer, err, damp = _quantize_layer(block.get_submodule(name), hessians.pop(name), config)
                        _set_module(block, name, layer)
                        report.append(LayerReport(f"{prefix}.{name}", layer.in_features, layer.out_features,
                                                  config.bits, err, damp, time.perf_counter() - t0))
                        bar.set_postfix_str(f"{name} err={err:.2e}")
                    del hessians
            outs = _run_block(block, inputs, device)
            if fp_block is not None:
                fp_hidden = _run_block(fp_block, [_with_hidden(a, k, h) for (a, k), h in zip(inputs, fp_hidden)],
                                       device)
                del fp_block
            inputs = [_with_hidden(args, kwargs, h) for (args, kwargs), h in zip(inputs, outs)]
            blocks[b] = block.to(home)
            if progress:
                errs = [r.error for r in report if r.name.startswith(prefix + ".")]
                if errs:
                    bar.write(f"block {b}: {len(errs)} layers, mean error {sum(errs) / len(errs):.3e}, "
                              f"max {max(errs):.3e}")
        del inputs
        if config.lm_head:
            report.extend(_quantize_head(model, batches, config, home))
    model.train(was_training)
    model.config.quantization_config = config.to_dict() if hasattr(model, "config") else None
    return (model, report) if return_report else model


def _head_name(model: nn.Module) -> str | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for n, m in model.named_modules():
        if m is head:
            return n
    return None


def _quantize_head(model, batches, config, device):
    name = _head_name(model)
    if name is None or not is_linear_like(model.get_submodule(name)):
        raise ValueError("lm_head=True but the model has no linear output projection")
    head = model.get_submodule(name)
    acc = HessianAccumulator(linear_weight(head).shape[1], device=device)
    handle = head.register_forward_pre_hook(lambda m, args: acc.add(args[0]))
    try:
        for batch in batches:
            model(**_to(batch, device))
    finally:
        handle.remove()
    t0 = time.perf_counter()
    if getattr(model.config, "tie_word_embeddings", False):
        # the head shares its weight with the input embedding: give it its own copy before replacing it
        model.config.tie_word_embeddings = False
    layer, err, damp = _quantize_layer(head, acc, config)
    _set_module(model, name, layer)
    return [LayerReport(name, layer.in_features, layer.out_features, config.bits, err, damp,
                        time.perf_counter() - t0)]
