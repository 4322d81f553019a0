"""Hugging Face glue: swap slimformer modules into a model."""
from .swap import is_linear_like, linear_weight, replace_linear

__all__ = ["replace_linear", "is_linear_like", "linear_weight"]
