"""slimformer: compressed pre-trained transformers, fast.

    import slimformer
    qlinear = slimformer.QuantLinear.from_linear(linear, bits=4, group_size=128)
"""
from . import ops
from .formats import FORMATS, WeightFormat, get_format
from .gptq import QuantLinear, quantize_weight, set_activation_mode
from .gptq.config import GPTQConfig
from .gptq.model import quantize
from .hf.checkpoint import CheckpointError, load_pretrained, save_pretrained
from .hf import replace_linear
from .sparse24 import Sparse24Config, Sparse24Linear, Sparse24QuantLinear, prune_weight, sparsify
from .tokens import TokenPruneConfig, prune_tokens, token_pruning_report, unprune_tokens

__version__ = "0.1.0"

try:  # register GPTQConfig as a transformers quantization method ("slimformer")
    from .hf.integration import register as _register_with_transformers
except ImportError:  # transformers missing: kernels and modules still work
    pass
else:
    _register_with_transformers()
__all__ = ["QuantLinear", "quantize_weight", "set_activation_mode", "GPTQConfig", "quantize", "save_pretrained",
           "load_pretrained", "CheckpointError", "replace_linear", "Sparse24Linear", "Sparse24QuantLinear",
           "Sparse24Config", "sparsify", "prune_weight", "TokenPruneConfig", "prune_tokens", "unprune_tokens",
           "token_pruning_report", "ops", "FORMATS", "WeightFormat", "get_format", "__version__"]
