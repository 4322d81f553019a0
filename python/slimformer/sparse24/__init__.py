"""N:M (2:4) semi-structured sparsity: the compressed formats (format.py: 2:4, and 2:4 + int4 with its kernel layout),
one-layer pruning with magnitude, Wanda and SparseGPT (algorithm.py), the modules (module.py: Sparse24Linear,
Sparse24QuantLinear), whole-model pruning (model.py) and the compressed-tensors sparse-24-bitmask checkpoint layout
(checkpoint.py)."""
from .algorithm import PruneResult, magnitude_prune, prune_weight, sparsegpt, wanda_prune
from .model import Sparse24Config, sparsify
from .module import Sparse24Linear, Sparse24QuantLinear
from . import checkpoint as _checkpoint  # noqa: F401 (registers the sparse-24-bitmask checkpoint format)

__all__ = ["Sparse24Linear", "Sparse24QuantLinear", "Sparse24Config", "sparsify", "prune_weight", "sparsegpt",
           "wanda_prune", "magnitude_prune", "PruneResult"]
