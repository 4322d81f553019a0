"""slimformer: compressed pre-trained transformers, fast.

    import slimformer
    qlinear = slimformer.QuantLinear.from_linear(linear, bits=4, group_size=128)
"""
from . import ops
from .formats import FORMATS, WeightFormat, get_format
from .gptq import QuantLinear, quantize_weight
from .gptq.config import GPTQConfig
from .gptq.model import quantize
from .hf import replace_linear

__version__ = "0.1.0"
__all__ = ["QuantLinear", "quantize_weight", "GPTQConfig", "quantize", "replace_linear", "ops", "FORMATS", "WeightFormat", "get_format", "__version__"]
