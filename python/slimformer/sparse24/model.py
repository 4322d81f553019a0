"""Whole-model N:M pruning: slimformer.sparsify(model, Sparse24Config(...), calibration_data, tokenizer).

SparseGPT collects each target layer's Hessian (and with asym_calibration GPTQv2's cross term), Wanda the input
norms, block by block in execution order through the calibration engine (slimformer.hf.calibrate); magnitude needs
no data. By default only the feed-forward linears are pruned (the "2:4 sparse FFN"); targets="all" prunes every
linear of the blocks, or pass fnmatch patterns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..hessian import HessianAccumulator
from ..hf.calibrate import InputNormStatistic, LayerCompressor, Targets, run_layerwise
from ..hf.swap import is_linear_like, linear_weight
from . import format as fmt
from .algorithm import METHODS, magnitude_prune, sparsegpt, wanda_prune
from .module import Sparse24Linear, Sparse24QuantLinear

# Feed-forward linears by architecture: LLaMA/Mistral/Qwen2 and GPT-2 (mlp.*), BERT/MiniLM/ViT (intermediate.dense
# and the block's output.dense, not attention.output.dense), OPT (fc1/fc2), others (feed_forward, ffn).
FFN_INCLUDE = ("*.mlp.*", "*.intermediate.dense", "*.output.dense", "*.fc1", "*.fc2", "*.feed_forward.*", "*.ffn.*")
FFN_EXCLUDE = ("*.attention.output.dense", "*.attention.*", "*.attn.*", "*.self_attn.*")


@dataclass
class Sparse24Config:
    method: str = "sparsegpt"  # "sparsegpt", "wanda" or "magnitude"
    n: int = 2
    m: int = 4
    targets: str | tuple | list = "ffn"  # "ffn", "all", or fnmatch patterns of layer names
    modules_to_not_convert: list[str] | None = None  # fnmatch patterns kept dense
    damp_percent: float = 0.01
    block_size: int = 128
    true_sequential: bool = True
    # SparseGPT toward the full-precision model's outputs (GPTQv2's asymmetric calibration, least-squares start)
    asym_calibration: bool = False
    asym_alpha: float = 0.25
    block_name: str | None = None
    model_seqlen: int | None = None
    values_dtype: torch.dtype | None = None  # dtype of the kept values (default: the layer's)
    # joint SparseGPT + GPTQ (one pass): the kept weights are also rounded to GPTQ's grid (bits, group_size, sym,
    # mse of this GPTQConfig). bits=4 gives Sparse24QuantLinear layers (packed 2:4 + int4, its own kernels); other
    # widths have no packed layout and give Sparse24Linear layers holding the dequantized kept values (the quality
    # of the quantized model, the memory of 2:4 alone).
    quantize: Any = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        fmt.check_nm(self.n, self.m)
        if isinstance(self.targets, str) and self.targets not in ("ffn", "all"):
            self.targets = (self.targets,)
        if not isinstance(self.targets, str):
            if not self.targets or not all(isinstance(p, str) for p in self.targets):
                raise ValueError(f"targets must be 'ffn', 'all' or a non-empty list of name patterns, got "
                                 f"{self.targets!r}")
            self.targets = tuple(self.targets)
        if (not isinstance(self.damp_percent, (int, float)) or isinstance(self.damp_percent, bool)
                or not 0 < self.damp_percent < 1):
            raise ValueError(f"damp_percent must lie in (0, 1), got {self.damp_percent!r}")
        if not isinstance(self.block_size, int) or self.block_size <= 0 or self.block_size % self.m:
            raise ValueError(f"block_size must be a positive multiple of m={self.m}, got {self.block_size!r}")
        if self.asym_calibration and self.method != "sparsegpt":
            raise ValueError("asym_calibration needs method='sparsegpt'")
        if not 0 <= self.asym_alpha < float("inf"):
            raise ValueError(f"asym_alpha must be a finite number >= 0, got {self.asym_alpha}")
        if self.model_seqlen is not None and self.model_seqlen <= 0:
            raise ValueError(f"model_seqlen must be positive, got {self.model_seqlen}")
        if self.values_dtype is not None and self.values_dtype not in fmt.FLOAT_DTYPES:
            raise ValueError(f"values_dtype must be one of {fmt.FLOAT_DTYPES} or None, got {self.values_dtype}")
        if isinstance(self.modules_to_not_convert, str):
            self.modules_to_not_convert = [self.modules_to_not_convert]
        if self.quantize is not None:
            from ..gptq.config import GPTQConfig
            if not isinstance(self.quantize, GPTQConfig):
                raise TypeError(f"quantize must be a slimformer.GPTQConfig or None, got {type(self.quantize).__name__}")
            if self.method != "sparsegpt":
                raise ValueError("quantize (the joint 2:4 + GPTQ pass) needs method='sparsegpt'")


    def selector(self) -> Targets:
        skip = tuple(self.modules_to_not_convert or ())
        if self.targets == "ffn":
            return Targets(include=FFN_INCLUDE, exclude=FFN_EXCLUDE + skip, block_name=self.block_name)
        if self.targets == "all":
            return Targets(exclude=skip, block_name=self.block_name)
        return Targets(include=self.targets, exclude=skip, block_name=self.block_name)


class Sparse24Compressor(LayerCompressor):
    """N:M pruning for the calibration engine, as config.method says."""

    def __init__(self, config: Sparse24Config):
        self.config = config
        self.method = config.method
        self.statistic = {"sparsegpt": HessianAccumulator, "wanda": InputNormStatistic, "magnitude": None}[config.method]
        self.asymmetric = config.asym_calibration
        self.true_sequential = config.true_sequential
        self.targets = config.selector()
        self.progress_label = f"{config.method} {config.n}:{config.m}" + (
            f" + int{config.quantize.bits}" if config.quantize is not None else "")

    def compress(self, name, module, stat):
        c = self.config
        weight = linear_weight(module).detach()
        fmt.check_in_features(weight.shape[1], c.m)
        if c.method == "sparsegpt":
            q = c.quantize
            r = sparsegpt(weight, stat.hessian, n=c.n, m=c.m, damp=c.damp_percent, block_size=c.block_size,
                          asym_cross=stat.cross, asym_alpha=c.asym_alpha, bits=None if q is None else q.bits,
                          group_size=128 if q is None else q.group_size, sym=True if q is None else q.sym,
                          mse=False if q is None else q.mse)
        elif c.method == "wanda":
            r = wanda_prune(weight, stat.norms, c.n, c.m)
        else:
            r = magnitude_prune(weight, c.n, c.m)
        bias = getattr(module, "bias", None)
        bias = bias if isinstance(bias, torch.Tensor) else None
        dtype = c.values_dtype or (weight.dtype if weight.dtype in fmt.FLOAT_DTYPES else torch.float32)
        if r.bits == 4 and (c.n, c.m) == (2, 4):
            layer = Sparse24QuantLinear.from_quantized(r.q.t(), r.mask, r.scales.t(), r.zeros.t(), r.group_size,
                                                       bias)
        else:
            layer = Sparse24Linear.from_dense(r.weight, r.mask, bias, n=c.n, m=c.m, dtype=dtype)
        fields = {"error": r.error, "sparsity": f"{c.n}:{c.m}", "damp": r.damp}
        if r.bits is not None:
            fields.update(bits=r.bits, group_size=r.group_size)
        return layer, fields


@torch.no_grad()
def sparsify(model: nn.Module, config: Sparse24Config | None = None, calibration_data=None, tokenizer=None, *,
             device=None, progress: bool = True, report: list | None = None) -> nn.Module:
    """Prunes the target linears of a Hugging Face model's blocks to N:M in place and returns the model (its layers
    become Sparse24Linear). calibration_data / tokenizer as for slimformer.quantize (SparseGPT and Wanda need it,
    magnitude does not). report: a list that receives one LayerReport per pruned layer. On error the model is left
    as it was."""
    from ..gptq.model import calibration_batches
    config = config or Sparse24Config()
    if not isinstance(config, Sparse24Config):
        raise TypeError(f"config must be a slimformer.Sparse24Config, got {type(config).__name__}")
    if not any(is_linear_like(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear (or Conv1D) layers to prune")
    batches = None
    if config.method != "magnitude":
        max_length = config.model_seqlen or getattr(getattr(model, "config", None), "max_position_embeddings", None)
        try:
            embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        except NotImplementedError:
            embeddings = None
        if calibration_data is None:
            raise ValueError(f"method={config.method!r} needs calibration_data (strings with a tokenizer, or "
                             "model-input dicts); method='magnitude' needs none")
        batches = calibration_batches(calibration_data, tokenizer, max_length,
                                      getattr(embeddings, "num_embeddings", None))
    rows = run_layerwise(model, Sparse24Compressor(config), batches, device=device, progress=progress)
    if report is not None:
        report.extend(rows)
    return model
