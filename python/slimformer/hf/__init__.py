"""Hugging Face glue: swap slimformer modules into a model."""
from .swap import replace_linear

__all__ = ["replace_linear"]
