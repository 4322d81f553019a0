"""GPTQ int2/3/4/8 weight-only quantization: format (format.py), offline algorithm (algorithm.py), the module
(module.py), whole-model compression (model.py) and its checkpoint format (checkpoint.py)."""
from .algorithm import GPTQResult, HessianAccumulator, gptq, quantization_grid, reconstruction_error, round_to_nearest
from .module import QuantLinear, quantize_weight, set_activation_mode
from . import checkpoint as _checkpoint  # noqa: F401 (registers GPTQ's checkpoint format)

__all__ = ["QuantLinear", "quantize_weight", "set_activation_mode", "gptq", "GPTQResult", "HessianAccumulator", "quantization_grid",
           "reconstruction_error", "round_to_nearest"]
