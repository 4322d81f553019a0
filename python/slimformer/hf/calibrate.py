"""The calibration engine every layer-wise compression method runs on.

A method is a `LayerCompressor`: which layers it touches (a `Targets` selector), which statistics of a layer's
inputs it needs (a `Statistic` class: the Hessian for GPTQ and SparseGPT, input-channel norms for Wanda, none for
RTN or magnitude pruning), and `compress(name, module, statistic)`, which returns the replacement module and the
method's fields of the report row. `run_layerwise` drives it the way GPTQ was published for transformers:

1. capture the inputs of the first block (the nn.ModuleList of transformer layers) by running the model until
   that block, once per calibration sample;
2. for each block: learn the execution order of its target layers on one sample (layers that read the same input
   tensor, such as q/k/v or gate/up, form one sequential group); then for each group, hook the group's layers,
   run the block over every sample to accumulate their statistics, and compress them; the block is then run once
   more to give the next block its inputs. Only one block's activations are alive at a time, on the CPU.
3. layers outside the blocks that the selector names (an lm_head, a pooler) are compressed last, with statistics
   from one more pass of the whole model.

With `LayerCompressor.asymmetric` (GPTQv2) the engine also carries the full-precision model's hidden states from
block to block and runs a dense copy of each block beside it, so a statistic can pair each layer's input with the
input the full-precision model gives it on the same tokens.

Methods that are not layer-wise (distillation fine-tuning, token pruning that patches attention modules) are
`ModelPass`es: `apply(model, batches, progress) -> report rows`; `compress_model` runs either kind.

If anything raises, every module the run replaced is put back: a model is never left half-compressed.
"""
from __future__ import annotations

import copy
import fnmatch
import inspect
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .swap import is_linear_like, linear_weight


# ----------------------------------------------------------------------------------------------- report rows
@dataclass
class LayerReport:
    """One compressed layer: what every method reports, plus the method's own fields in `extra` (also readable as
    attributes: report.bits, report.damp for GPTQ)."""
    name: str
    in_features: int
    out_features: int
    method: str
    error: float  # relative output error on the calibration inputs (nan without calibration)
    seconds: float
    extra: dict = field(default_factory=dict)

    def __getattr__(self, key):
        extra = self.__dict__.get("extra", {})
        if key in extra:
            return extra[key]
        raise AttributeError(f"{type(self).__name__} has no field {key!r}")

    def as_dict(self) -> dict:
        return dict(name=self.name, in_features=self.in_features, out_features=self.out_features,
                    method=self.method, error=self.error, seconds=self.seconds, **self.extra)


# ------------------------------------------------------------------------------------------------ statistics
class Statistic(Protocol):
    """Accumulates what a compressor needs to know about one layer's inputs. add(x) gets the layer input
    [..., in_features]; with an asymmetric compressor add(x, fp) also gets the full-precision model's input."""

    def add(self, x: torch.Tensor, fp: torch.Tensor | None = None) -> None: ...


class InputNormStatistic:
    """Per-input-channel L2 norm of the calibration inputs, ||X[:, j]||_2 over all tokens (Wanda's statistic)."""

    def __init__(self, in_features: int, device=None, *, asymmetric: bool = False):
        if asymmetric:
            raise ValueError("input norms have no asymmetric form")
        self.in_features = in_features
        self.sum_squares = torch.zeros(in_features, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor, fp: torch.Tensor | None = None):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"layer input has {x.shape[-1]} features, expected {self.in_features}")
        x = x.detach().reshape(-1, self.in_features).to(self.sum_squares.device, torch.float64)
        self.sum_squares += (x * x).sum(0)
        self.rows += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        return self.sum_squares.sqrt().to(torch.float32)


# ------------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Targets:
    """Which linear layers a method compresses: every linear (nn.Linear or transformers' Conv1D) inside the
    repeated blocks whose qualified name matches `include` and no `exclude` pattern (a pattern also matches the
    last name component: "down_proj"), plus the output head when `lm_head` is set. Layers outside the blocks
    (poolers, classifier heads, projections) stay dense."""
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    lm_head: bool = False
    block_name: str | None = None  # the nn.ModuleList of blocks; found automatically when None

    def matches(self, name: str) -> bool:
        def hit(p):
            return fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.rsplit(".", 1)[-1], p)
        return any(hit(p) for p in self.include) and not any(hit(p) for p in self.exclude)


# ------------------------------------------------------------------------------------------------ methods
class LayerCompressor:
    """A layer-wise compression method run by `run_layerwise`. Subclasses set the class attributes and implement
    compress(); targets is an instance attribute (a Targets)."""
    method: ClassVar[str] = "?"
    statistic: ClassVar[type | None] = None  # None: needs no calibration data (RTN, magnitude)
    asymmetric: bool = False  # the statistic also takes the full-precision model's inputs (GPTQv2)
    true_sequential: bool = True  # compress layer groups in execution order, each seeing compressed inputs
    targets: Targets = Targets()
    progress_label: str = ""

    def make_statistic(self, module: nn.Module, device) -> Any:
        in_features = linear_weight(module).shape[1]
        return self.statistic(in_features, device=device, asymmetric=self.asymmetric)

    def compress(self, name: str, module: nn.Module, statistic) -> tuple[nn.Module, dict]:
        """Returns (replacement module, report fields: at least "error"; any others go to LayerReport.extra)."""
        raise NotImplementedError

    def before_head(self, model: nn.Module, name: str) -> None:
        """Called before the output head is compressed (GPTQ unties it from the input embedding)."""


class ModelPass(Protocol):
    """A whole-model method (not layer by layer): changes the model in place, returns its report rows."""

    def apply(self, model: nn.Module, batches: list[dict], progress: bool) -> list[LayerReport]: ...


# --------------------------------------------------------------------------------------------- the engine
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


def head_name(model: nn.Module) -> str | None:
    """Qualified name of the model's output projection (get_output_embeddings), or None."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None
    for n, m in model.named_modules():
        if m is head:
            return n
    return None


def select_targets(model: nn.Module, targets: Targets) -> tuple[str, nn.ModuleList, list[str], str | None]:
    """(block path, blocks, names of the target linears inside the blocks, the head's name if it is a target)."""
    path, blocks = find_blocks(model, targets.block_name)
    inside = [f"{path}.{n}" for n, m in blocks.named_modules() if n and is_linear_like(m)
              and targets.matches(f"{path}.{n}")]
    head = None
    if targets.lm_head:
        head = head_name(model)
        if head is None or not is_linear_like(model.get_submodule(head)):
            raise ValueError("lm_head=True but the model has no linear output projection")
    return path, blocks, inside, head


class _Swaps:
    """Replaces modules and remembers the originals, so a failed run can put every one of them back."""

    def __init__(self, root: nn.Module):
        self.root, self.done = root, []

    def set(self, parent: nn.Module, name: str, module: nn.Module):
        path, _, child = name.rpartition(".")
        owner = parent.get_submodule(path) if path else parent
        self.done.append((owner, child, getattr(owner, child)))
        setattr(owner, child, module)

    def undo(self):
        for owner, child, original in reversed(self.done):
            setattr(owner, child, original)
        self.done.clear()


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


def _execution_groups(block, names, sample, device):
    """The named layers in the order they first run on one sample, grouped by shared input tensor (q/k/v,
    gate/up). Only records the order: no statistic is allocated."""
    order, handles = [], []
    for name in names:
        def hook(mod, args, name=name):
            if all(n != name for n, _ in order):
                order.append((name, args[0]))
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        _run_one(block, *sample, device)
    finally:
        for h in handles:
            h.remove()
    groups = []
    for name, x in order:
        if groups and groups[-1][1] is x:
            groups[-1][0].append(name)
        else:
            groups.append(([name], x))
    return [g for g, _ in groups]


def _collect(block, names, inputs, device, compressor, fp=None):
    """Statistics of the named layers of block over all inputs. fp = (full-precision copy of the block, the
    full-precision hidden states per input): each sample first runs through the dense copy, whose layer inputs
    are handed to the statistic beside the compressed block's inputs on the same sample."""
    stats, handles = {}, []
    fp_x: dict[str, list] = {name: [] for name in names}
    for name in names:
        module = block.get_submodule(name)

        def hook(mod, args, name=name):
            x = args[0]
            if name not in stats:
                stats[name] = compressor.make_statistic(mod, x.device)
            if fp is None:
                stats[name].add(x)
                return
            if not fp_x[name]:
                raise RuntimeError(f"{name} ran more often in the compressed block than in its full-precision copy; "
                                   "asymmetric calibration cannot pair their inputs")
            stats[name].add(x, fp_x[name].pop(0))

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
    return stats


def _compress_one(compressor, swaps, root, local_name, full_name, stat, report, bar=None):
    module = root.get_submodule(local_name)
    t0 = time.perf_counter()
    replacement, fields = compressor.compress(full_name, module, stat)
    swaps.set(root, local_name, replacement)
    fields = dict(fields)
    error = float(fields.pop("error", float("nan")))
    weight = linear_weight(module)
    report.append(LayerReport(full_name, weight.shape[1], weight.shape[0], compressor.method, error,
                              time.perf_counter() - t0, fields))
    if bar is not None:
        bar.set_postfix_str(f"{local_name} err={error:.2e}")


def _head_statistic(model, head, batches, compressor, device):
    module = model.get_submodule(head)
    stat = compressor.make_statistic(module, device)
    handle = module.register_forward_pre_hook(lambda m, args: stat.add(args[0]))
    try:
        for batch in batches:
            model(**_to(batch, device))
    finally:
        handle.remove()
    return stat


def _refuse_if_compressed(model, compressor):
    from .checkpoint import compressed_layers
    groups = compressed_layers(model)
    count = sum(len(group) for group in groups.values())
    if count:
        kinds = "/".join(sorted({type(m).__name__ for group in groups.values() for m in group.values()}))
        raise ValueError(f"{type(model).__name__} is already compressed ({count} {kinds} layers) and no dense linear "
                         f"layer in its blocks matches the targets {compressor.targets}; compress the dense model")


@torch.no_grad()
def run_layerwise(model: nn.Module, compressor: LayerCompressor, batches: list[dict] | None, *, device=None,
                  progress: bool = True) -> list[LayerReport]:
    """Compresses the target layers of model in place with compressor; returns one LayerReport per layer, in the
    order they were compressed. batches: model-input dicts (see calibration_batches), None when the compressor
    needs no statistics. device: where each block is processed (default: where the model is); activations stay on
    the CPU between blocks. On any error every replaced module is restored before the error propagates."""
    if not any(is_linear_like(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear (or Conv1D) layers to compress")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    try:
        block_path, blocks, inside, head = select_targets(model, compressor.targets)
    except ValueError:
        _refuse_if_compressed(model, compressor)
        raise
    if not inside and head is None:
        _refuse_if_compressed(model, compressor)
        raise ValueError(f"no linear layers of {type(model).__name__} match the targets {compressor.targets} "
                         "(every linear in the blocks is excluded)")
    if compressor.statistic is not None and not batches:
        raise ValueError(f"{compressor.method} needs calibration data")
    report: list[LayerReport] = []
    swaps = _Swaps(model)
    was_training = model.training
    model.eval()
    label = compressor.progress_label or compressor.method
    try:
        if compressor.statistic is None:  # no calibration: every target at once, no forward passes
            for name in tqdm(inside + ([head] if head else []), desc=label, disable=not progress):
                if name == head:
                    compressor.before_head(model, name)
                _compress_one(compressor, swaps, model, name, name, None, report)
            return report
        inputs = _capture_block_inputs(model, blocks[0], batches, home)
        fp_hidden = [_hidden(a, k) for a, k in inputs] if compressor.asymmetric else None
        bar = tqdm(range(len(blocks)), desc=label, disable=not progress)
        for b in bar:
            block = blocks[b].to(device)
            fp_block = copy.deepcopy(block) if fp_hidden is not None else None
            prefix = f"{block_path}.{b}."
            names = [n[len(prefix):] for n in inside if n.startswith(prefix)]
            if names:
                groups = _execution_groups(block, names, inputs[0], device) if compressor.true_sequential else [names]
                for group in groups:
                    # collected after the earlier groups are compressed, so each sees its real inputs
                    stats = _collect(block, group, inputs, device, compressor,
                                     None if fp_block is None else (fp_block, fp_hidden))
                    for name in group:
                        if name not in stats:
                            warnings.warn(f"{prefix}{name} never ran on the calibration data; left dense",
                                          RuntimeWarning, stacklevel=2)
                            continue
                        _compress_one(compressor, swaps, block, name, prefix + name, stats.pop(name), report, bar)
                    del stats
            outs = _run_block(block, inputs, device)
            if fp_block is not None:
                fp_hidden = _run_block(fp_block, [_with_hidden(a, k, h) for (a, k), h in zip(inputs, fp_hidden)],
                                       device)
                del fp_block
            inputs = [_with_hidden(args, kwargs, h) for (args, kwargs), h in zip(inputs, outs)]
            blocks[b] = block.to(home)
            if progress:
                errs = [r.error for r in report if r.name.startswith(prefix)]
                if errs:
                    bar.write(f"block {b}: {len(errs)} layers, mean error {sum(errs) / len(errs):.3e}, "
                              f"max {max(errs):.3e}")
        del inputs
        if head is not None:
            stat = _head_statistic(model, head, batches, compressor, home)
            compressor.before_head(model, head)
            _compress_one(compressor, swaps, model, head, head, stat, report)
    except BaseException:
        swaps.undo()
        raise
    finally:
        model.train(was_training)
    return report


def compress_model(model: nn.Module, method: LayerCompressor | ModelPass, batches: list[dict] | None, *,
                   device=None, progress: bool = True) -> list[LayerReport]:
    """Runs a layer-wise compressor through run_layerwise, or a whole-model pass as it is."""
    if isinstance(method, LayerCompressor):
        return run_layerwise(model, method, batches, device=device, progress=progress)
    if not callable(getattr(method, "apply", None)):
        raise TypeError(f"method must be a LayerCompressor or a ModelPass (with apply()), got {type(method).__name__}")
    return method.apply(model, batches, progress)
