"""`import slimformer` registers GPTQConfig with transformers: from_pretrained(..., quantization_config=GPTQConfig)
loads dense weights and quantizes through slimformer."""
import pytest
import torch
import transformers

import slimformer
from models import inputs, output, tiny
from slimformer import GPTQConfig, QuantLinear


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("dense")
    tiny("llama").save_pretrained(str(d))
    return d


def test_from_pretrained_quantizes_with_gptq(dense_dir, tmp_path):
    calib = inputs("llama", 3)
    cfg = GPTQConfig(bits=4, group_size=64, desc_act=True, dataset=calib)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(dense_dir), quantization_config=cfg)
    dense = transformers.AutoModelForCausalLM.from_pretrained(str(dense_dir))
    assert isinstance(model.model.layers[1].mlp.down_proj, QuantLinear)
    assert model.model.layers[0].self_attn.q_proj.perm is not None
    ref, out = output(dense, calib[0]), output(model, calib[0])
    assert ((out - ref).norm() / ref.norm()).item() < 0.2
    slimformer.save_pretrained(model, tmp_path / "ours")
    assert torch.equal(output(slimformer.load_pretrained(tmp_path / "ours"), calib[0]), out)
    # transformers' own save_pretrained writes the same Hub layout (QuantLinear's state_dict) and config
    model.save_pretrained(str(tmp_path / "hf"))
    assert torch.equal(output(slimformer.load_pretrained(tmp_path / "hf"), calib[0]), out)


def test_from_pretrained_rtn_and_errors(dense_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(dense_dir), quantization_config=GPTQConfig(bits=3, group_size=32, method="rtn"))
    assert model.model.layers[0].mlp.up_proj.bits == 3
    with pytest.raises(ValueError, match="needs calibration data"):
        transformers.AutoModelForCausalLM.from_pretrained(str(dense_dir), quantization_config=GPTQConfig(bits=4))


def test_config_dict_round_trip():
    cfg = GPTQConfig(bits=3, group_size=64, desc_act=True, sym=False, checkpoint_format="gptq_v2",
                     modules_to_not_convert=["lm_head"], dataset=["x"], tokenizer=object())
    d = cfg.to_dict()
    assert d["quant_method"] == "gptq" and "dataset" not in d and "tokenizer" not in d
    back = GPTQConfig.from_dict(d)
    assert back.to_dict() == d and back.quant_method == "slimformer"
    with pytest.raises(ValueError, match="quant_method"):
        GPTQConfig.from_dict({"quant_method": "awq", "bits": 4})
