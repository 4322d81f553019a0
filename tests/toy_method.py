"""A toy compression method built only from the method-neutral layers (the calibration engine and the checkpoint
registry), as a second method would use them: per-row magnitude pruning to 50% as a dense Linear with a mask."""
import torch
from torch import nn

from slimformer.hf.calibrate import InputNormStatistic, LayerCompressor, Targets
from slimformer.hf.checkpoint import CheckpointMethod


class MaskedLinear(nn.Module):
    """A dense Linear with a fixed 0/1 mask: the toy method's module, no kernel."""

    def __init__(self, weight, mask, bias=None):
        super().__init__()
        self.weight = nn.Parameter(weight * mask, requires_grad=False)
        self.register_buffer("mask", mask)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight, self.bias)


class RowMagnitude50(LayerCompressor):
    """Per-row magnitude pruning to 50%, weighted by the input-channel norms (Wanda's score) when calibrated."""
    method = "row-magnitude-50"

    def __init__(self, calibrated: bool, targets=Targets()):
        self.statistic = InputNormStatistic if calibrated else None
        self.targets = targets
        self.seen = []

    def compress(self, name, module, stat):
        self.seen.append((name, None if stat is None else stat.rows))
        w = module.weight.detach()
        score = w.abs() * (stat.norms if stat is not None else 1.0)
        keep = score.topk(w.shape[1] // 2, dim=1).indices
        mask = torch.zeros_like(w).scatter_(1, keep, 1.0)
        err = ((w * (1 - mask)).norm() / w.norm()).item()
        return MaskedLinear(w, mask, module.bias), {"error": err, "sparsity": 1 - mask.mean().item()}


def _build(name, dense, block, present, dtype):
    n, k = dense.weight.shape
    bias = torch.zeros(n, dtype=dtype) if "bias" in present else None
    return MaskedLinear(torch.zeros(n, k, dtype=dtype), torch.zeros(n, k, dtype=dtype), bias)


TOY_CHECKPOINT = CheckpointMethod(
    name="row-magnitude-50", module_type=MaskedLinear, leaves=("weight", "mask", "bias"), required=("weight", "mask"),
    marker="mask", quant_methods=("row-magnitude",),
    config_block=lambda model, layers: {"quant_method": "row-magnitude", "sparsity": 0.5, "layers": len(layers)},
    build=_build)
