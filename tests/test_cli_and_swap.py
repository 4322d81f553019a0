import copy

import pytest
import torch

from slimformer import QuantLinear, cli, replace_linear


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "native extension: yes" in out and "gptq_int3" in out


def test_replace_linear_in_hf_model():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=100)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 100, (1, 12))
    dense = copy.deepcopy(model)
    names = replace_linear(model, lambda n, lin: QuantLinear.from_linear(lin, bits=4, group_size=32),
                           progress=False)
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(model.lm_head, torch.nn.Linear)
    for n in names:  # the dense model with the weights the quantized layers compute with
        dense.get_submodule(n).weight.data = model.get_submodule(n).dequantize()
        dense.get_submodule(n).bias = None
    with torch.inference_mode():
        y, ref = model(ids).logits, dense(ids).logits
    assert ((y - ref).norm() / ref.norm()).item() < 1e-5


def test_replace_linear_without_targets():
    with pytest.raises(ValueError, match="no nn.Linear"):
        replace_linear(torch.nn.Sequential(torch.nn.ReLU()), lambda n, m: m, progress=False)
