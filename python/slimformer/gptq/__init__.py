"""GPTQ int2/3/4/8 weight-only quantization: format (format.py), offline algorithm (algorithm.py), module."""
from .algorithm import round_to_nearest
from .module import QuantLinear

__all__ = ["QuantLinear", "round_to_nearest"]
