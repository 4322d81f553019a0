"""Token pruning and merging for transformer encoders (Zero-TPrune, ToMe and baselines).

    import slimformer
    slimformer.prune_tokens(model, slimformer.TokenPruneConfig(method="zero-tprune", flops=0.65))
    ...
    slimformer.unprune_tokens(model)
"""
from . import algorithms, schedule
from .patch import METHODS, TokenPruneConfig, prune_tokens, token_pruning_report, unprune_tokens

__all__ = ["TokenPruneConfig", "prune_tokens", "unprune_tokens", "token_pruning_report", "METHODS", "algorithms",
           "schedule"]
