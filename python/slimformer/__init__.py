"""slimformer: compressed pre-trained transformers, fast.

    import slimformer
    qlinear = slimformer.QuantLinear.from_linear(linear, bits=4, group_size=128)
"""
from . import ops
from .formats import FORMATS, WeightFormat, get_format
from .gptq import QuantLinear, quantize_weight
from .gptq.config import GPTQConfig
from .gptq.model import quantize
from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .hf import replace_linear

__version__ = "0.1.0"
__all__ = ["QuantLinear", "quantize_weight", "GPTQConfig", "quantize", "save_pretrained", "load_pretrained",
           "CheckpointError", "replace_linear", "ops", "FORMATS", "WeightFormat", "get_format", "__version__"]
