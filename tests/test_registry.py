"""The checkpoint registry (slimformer.hf.checkpoint) as a second method uses it: a toy method registered through the
engine and the registry only (tests/toy_method.py), saved and loaded alone and mixed with GPTQ, and the registry's
own checks."""
import json

import pytest
import torch

import slimformer
from models import inputs, output, tiny
from slimformer import CheckpointError, GPTQConfig, QuantLinear
from slimformer.hf import checkpoint as registry
from slimformer.hf.calibrate import Targets, compress_model
from toy_method import TOY_CHECKPOINT, MaskedLinear, RowMagnitude50


@pytest.fixture
def toy_registered():
    registry.register_checkpoint_method(TOY_CHECKPOINT)
    yield TOY_CHECKPOINT
    registry.unregister_checkpoint_method(TOY_CHECKPOINT.name)


def test_toy_method_saves_and_loads_through_the_registry_only(tmp_path, toy_registered):
    model = tiny("llama")
    calib = inputs("llama", 2, length=16)
    compress_model(model, RowMagnitude50(True), calib, progress=False)
    slimformer.save_pretrained(model, tmp_path, max_shard_size="60KB")
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "row-magnitude", "sparsity": 0.5, "layers": 14}
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "quantize_config.json").exists()  # GPTQ's extra file belongs to GPTQ's row
    loaded = slimformer.load_pretrained(tmp_path)
    masked = [n for n, m in loaded.named_modules() if isinstance(m, MaskedLinear)]
    assert len(masked) == 14 and not any(isinstance(m, QuantLinear) for m in loaded.modules())
    for n in masked:
        assert torch.equal(loaded.get_submodule(n).mask, model.get_submodule(n).mask)
    for b in calib:
        assert torch.equal(output(loaded, b), output(model, b))


def test_mixed_methods_in_one_checkpoint(tmp_path, toy_registered):
    # toy method on the MLP, GPTQ int4 on attention: one checkpoint, each layer rebuilt by its own row
    model = tiny("llama")
    calib = inputs("llama", 2, length=16)
    compress_model(model, RowMagnitude50(False, Targets(include=("*.mlp.*",))), None, progress=False)
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=32), calib, progress=False)
    slimformer.save_pretrained(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "slimformer" and set(qc["methods"]) == {"gptq", "row-magnitude-50"}
    assert qc["methods"]["gptq"]["config"]["bits"] == 4 and len(qc["methods"]["gptq"]["modules"]) == 8
    assert all(".mlp." in n for n in qc["methods"]["row-magnitude-50"]["modules"])
    loaded = slimformer.load_pretrained(tmp_path)
    assert isinstance(loaded.model.layers[1].self_attn.o_proj, QuantLinear)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, MaskedLinear)
    for b in calib:
        assert torch.equal(output(loaded, b), output(model, b))
    again = tmp_path / "again"
    slimformer.save_pretrained(loaded, again)
    assert json.loads((again / "config.json").read_text())["quantization_config"] == qc

    # a listed layer without its marker tensor, or a method nobody registered, is refused by name
    bad = dict(qc, methods=dict(qc["methods"], gptq=dict(qc["methods"]["gptq"], modules=qc["methods"]["gptq"][
        "modules"] + ["model.layers.0.mlp.up_proj"])))
    _rewrite_config(tmp_path, bad)
    with pytest.raises(CheckpointError, match="model.layers.0.mlp.up_proj"):
        slimformer.load_pretrained(tmp_path)
    _rewrite_config(tmp_path, dict(qc, methods={**qc["methods"], "nope": {"config": {}, "modules": []}}))
    with pytest.raises(CheckpointError, match="'nope', which is not registered"):
        slimformer.load_pretrained(tmp_path)


def _rewrite_config(path, qc):
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = qc
    (path / "config.json").write_text(json.dumps(cfg))


def test_registry_checks(toy_registered):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_checkpoint_method(TOY_CHECKPOINT)
    import dataclasses
    with pytest.raises(ValueError, match="already read by"):
        registry.register_checkpoint_method(dataclasses.replace(TOY_CHECKPOINT, name="other"))
    with pytest.raises(ValueError, match="reserved"):
        registry.register_checkpoint_method(dataclasses.replace(TOY_CHECKPOINT, name="x", quant_methods=("slimformer",)))
    with pytest.raises(ValueError, match="marker"):
        dataclasses.replace(TOY_CHECKPOINT, marker="scales")
    with pytest.raises(TypeError, match="CheckpointMethod"):
        registry.register_checkpoint_method(object())


def test_unregistered_method_cannot_be_loaded(tmp_path):
    model = tiny("llama")
    compress_model(model, RowMagnitude50(False), None, progress=False)
    with pytest.raises(ValueError, match="no compressed layers"):  # MaskedLinear is not a registered row here
        slimformer.save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match="no nn.ModuleList of blocks with linear"):  # nothing dense is left
        slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method="rtn"), progress=False)


def test_quantizing_a_quantized_model_says_so():
    model = tiny("llama")
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method="rtn"), progress=False)
    with pytest.raises(ValueError, match=r"already compressed \(14 QuantLinear layers\)"):
        slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method="rtn"), progress=False)
