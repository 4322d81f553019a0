"""The calibration engine (slimformer.hf.calibrate) as a second method would use it: a toy method registered through
the engine alone, statistics, targets, and the no-half-conversion guarantee."""
import pytest
import torch
from torch import nn

import slimformer
from models import inputs, output, tiny
from slimformer import GPTQConfig, QuantLinear
from slimformer.hf.calibrate import (InputNormStatistic, LayerCompressor, Targets, compress_model, run_layerwise,
                                     select_targets)
from slimformer.hf.swap import is_linear_like
from toy_method import MaskedLinear, RowMagnitude50


@pytest.mark.parametrize("calibrated", [False, True])
def test_toy_method_through_the_engine_only(calibrated):
    model = tiny("llama")
    calib = inputs("llama", 3, length=16)
    ref = output(model, calib[0])
    method = RowMagnitude50(calibrated)
    report = compress_model(model, method, calib if calibrated else None, progress=False)
    masked = {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}
    assert len(report) == len(masked) == 2 * 7 and [r.name for r in report] == [n for n, _ in method.seen]
    assert all(r.method == "row-magnitude-50" and r.sparsity == 0.5 and 0 < r.error < 1 for r in report)
    assert isinstance(model.lm_head, nn.Linear)  # not a target unless lm_head=True
    if calibrated:  # every sample's tokens reached every layer's statistic (3 samples x 16 tokens)
        assert all(rows == 48 for _, rows in method.seen)
    out = output(model, calib[0])
    assert not torch.equal(out, ref)
    # each layer is its masked weight: the dense model with those weights computes the same logits
    dense = tiny("llama")
    dense.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(".mask")})
    torch.testing.assert_close(output(dense, calib[0]), out)
    # in execution order: q/k/v (one group), o, gate/up, down, per block
    names = [r.name.split(".", 3)[-1] for r in report[:7]]
    assert names[:3] == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert names[3] == "self_attn.o_proj" and names[-1] == "mlp.down_proj"


def test_targets_select_the_same_layers_for_every_method():
    # GPTQ and RTN (and any other method) touch the linears inside the blocks, never a pooler outside them.
    for method in ("rtn", "gptq"):
        model = tiny("bert")
        slimformer.quantize(model, GPTQConfig(bits=4, group_size=64, method=method), inputs("bert", 2),
                            progress=False)
        assert isinstance(model.pooler.dense, nn.Linear), method
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 2 * 6, method
    _, _, inside, head = select_targets(tiny("llama"), Targets(exclude=("down_proj", "*.q_proj")))
    assert len(inside) == 2 * 5 and head is None


def test_a_failure_midway_leaves_the_model_as_it_was():
    model = tiny("llama")
    before = {n: type(m) for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    class FailsOnFifth(RowMagnitude50):
        def compress(self, name, module, stat):
            if len(self.seen) == 4:
                raise RuntimeError("boom")
            return super().compress(name, module, stat)

    for calibrated in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            run_layerwise(model, FailsOnFifth(calibrated), inputs("llama", 2, length=8), progress=False)
        assert {n: type(m) for n, m in model.named_modules()} == before
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_quantize_a_model_without_config():
    # A plain PyTorch model (no .config) used to raise AttributeError after every layer was replaced.
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
                                        for _ in range(2))

        def forward(self, x):
            for b in self.blocks:
                x = x + b(x)
            return x

    net = Net()
    x = torch.randn(4, 64)
    ref = net(x)
    for method in ("rtn", "gptq"):
        model = Net()
        model.load_state_dict(net.state_dict())
        slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method=method), [{"x": x}], progress=False)
        assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 4
        assert ((model(x) - ref).norm() / ref.norm()).item() < 0.1


def test_input_norm_statistic():
    stat = InputNormStatistic(8)
    xs = [torch.randn(2, 5, 8), torch.randn(3, 8)]
    for x in xs:
        stat.add(x)
    allx = torch.cat([x.reshape(-1, 8) for x in xs]).double()
    assert stat.rows == 13
    assert torch.allclose(stat.norms.double(), allx.norm(dim=0), rtol=1e-6)
    with pytest.raises(ValueError, match="features"):
        stat.add(torch.randn(2, 7))
    with pytest.raises(ValueError, match="asymmetric"):
        InputNormStatistic(8, asymmetric=True)


def test_engine_bad_input():
    model = tiny("llama")
    with pytest.raises(ValueError, match="needs calibration data"):
        run_layerwise(model, RowMagnitude50(True), None, progress=False)
    with pytest.raises(ValueError, match="match the targets"):
        run_layerwise(model, RowMagnitude50(False, Targets(include=("nothing",))), None, progress=False)
    with pytest.raises(TypeError, match="LayerCompressor or a ModelPass"):
        compress_model(model, object(), None)
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    assert all(is_linear_like(m) for n, m in model.named_modules() if n.endswith("_proj"))
