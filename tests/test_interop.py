"""Interop with the GPTQ peers (GPTQModel 7.7, AutoGPTQ 0.7.1, transformers, vLLM): how their checkpoints' fields
and zero points are read, and what we write for them. The peers' arithmetic is rebuilt here from their code (see
the comments); tests/test_checkpoint.py covers the layout itself."""
import json
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

import slimformer
from models import inputs, output, tiny
from slimformer import GPTQConfig, QuantLinear
from slimformer.gptq import format as F
from slimformer.hf import is_linear_like, linear_weight, replace_linear


def gptqmodel_v1_qzeros(zeros: torch.Tensor, bits: int) -> torch.Tensor:
    """v1 qzeros as GPTQModel writes them (utils/model.py, convert_gptq_v2_to_v1_format_module): the v2 words minus
    0x55555555 / 0x11111111 / 0x01010101 in int32 arithmetic at 2/4/8 bits, so a zero of 0 borrows from the next
    field; at 3 bits each field is shifted and wrapped on its own (_shift_gptq_qzeros)."""
    if bits == 3:
        return F.pack_cols((zeros - 1) & 7, 3)
    words = F.pack_cols(zeros, bits).to(torch.int64) & 0xFFFFFFFF
    offset = sum(1 << (bits * i) for i in range(32 // bits))
    words = (words - offset) & 0xFFFFFFFF
    return (words - ((words >> 31) << 32)).to(torch.int32)


def write_asym_checkpoint(path, bits, group_size, qzeros_fn, meta):
    """A tiny LLaMA whose block linears hold random asymmetric GPTQ layers with many zero points of 0 and of
    2^bits - 1 (what 2-bit g32 produces naturally). Returns {layer: true float weight [N, K]}."""
    torch.manual_seed(bits)
    dense = tiny("llama", hidden=256, intermediate=512)
    tensors, truth = {}, {}
    maxq = (1 << bits) - 1
    for name, module in dense.named_modules():
        if not is_linear_like(module) or ".layers." not in name:
            continue
        N, K = linear_weight(module).shape
        G = K // group_size
        q = torch.randint(0, maxq + 1, (K, N), dtype=torch.int32)
        zeros = torch.randint(0, maxq + 1, (G, N), dtype=torch.int32)
        zeros[:, ::3] = 0
        zeros[:, 1::5] = maxq
        scales = (torch.rand(G, N) * 0.02 + 0.001).to(torch.float16)
        g = torch.arange(K) // group_size
        truth[name] = (scales.double()[g] * (q.double() - zeros.double()[g])).t()
        tensors.update({f"{name}.qweight": F.pack_rows(q, bits), f"{name}.qzeros": qzeros_fn(zeros, bits),
                        f"{name}.scales": scales, f"{name}.g_idx": g.to(torch.int32)})
    quantized = {k.rsplit(".", 1)[0] for k in tensors}
    for key, t in dense.state_dict().items():
        if key.rsplit(".", 1)[0] not in quantized:
            tensors[key] = t.contiguous()
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    cfg = dense.config.to_dict()
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg["quantization_config"] = {"bits": bits, "group_size": group_size, "desc_act": False, "sym": False,
                                  "quant_method": "gptq", "method": "gptq", "format": "gptq",
                                  "checkpoint_format": "gptq", "pack_dtype": "int32", "damp_percent": 0.05,
                                  "meta": meta}
    (path / "config.json").write_text(json.dumps(cfg, default=str))
    return truth


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_gptqmodel_v1_asymmetric_zero_points_of_zero(tmp_path, bits):
    truth = write_asym_checkpoint(tmp_path / "gm", bits, 32, gptqmodel_v1_qzeros,
                                  {"quantizer": ["gptqmodel:7.7.0"], "uri": "https://github.com/modelcloud/gptqmodel"})
    model = slimformer.load_pretrained(tmp_path / "gm")
    for name, w in truth.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, QuantLinear) and layer.checkpoint_format == "gptq_v2"
        assert torch.equal(layer.dequantize().double(), w.float().double()), name
    # re-saved it is an exact v2 checkpoint
    slimformer.save_pretrained(model, tmp_path / "again")
    again = slimformer.load_pretrained(tmp_path / "again")
    for name, w in truth.items():
        assert torch.equal(again.get_submodule(name).dequantize().double(), w.float().double())
    if bits != 3:
        # the same words read field by field (AutoGPTQ's reading, for files it wrote) give other weights: the writer
        # decides, and the borrow is what made per-field reading wrong
        write_asym_checkpoint(tmp_path / "ag", bits, 32, gptqmodel_v1_qzeros, {"quantizer": ["auto_gptq:0.7.1"]})
        other = slimformer.load_pretrained(tmp_path / "ag")
        name = next(iter(truth))
        assert not torch.equal(other.get_submodule(name).dequantize().double(), truth[name].float().double())


def test_v1_reading_is_exact_where_no_field_borrows():
    # zero points 1 .. 2^bits - 1: both writers store the same words and both readings agree
    for bits in (2, 3, 4, 8):
        zeros = torch.randint(1, 1 << bits, (4, 64), dtype=torch.int32)
        assert torch.equal(F.qzeros_from_zeros(zeros, bits, "gptq"), gptqmodel_v1_qzeros(zeros, bits))
        for carry in (False, True):
            assert torch.equal(F.zeros_from_qzeros(gptqmodel_v1_qzeros(zeros, bits), bits, 64, "gptq", carry=carry),
                               zeros)


def test_saved_config_reads_as_gptqmodel_expects(tmp_path):
    model = tiny("llama")
    cfg = GPTQConfig(bits=4, group_size=32, method="rtn", modules_to_not_convert=["down_proj", "*.0.*.q_proj"])
    slimformer.quantize(model, cfg, progress=False)
    slimformer.save_pretrained(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    # GPTQModel maps "method" to its METHOD enum ("rtn" is not one): ours is in meta
    assert qc["method"] == "gptq" and qc["meta"]["calibration_method"] == "rtn"
    assert qc["checkpoint_format"] == "gptq" and 0 < qc["damp_percent"] < 1
    # modules_to_not_convert as GPTQModel / vLLM skip rules: "-:" + a regex that re.match()es the module name
    rules = [re.compile(k[2:]) for k in qc["dynamic"]]
    assert all(k.startswith("-:") and v == {} for k, v in qc["dynamic"].items())
    names = [n for n, m in model.named_modules() if ".layers." in n and (is_linear_like(m) or isinstance(m, QuantLinear))]
    skipped = {n for n in names if any(r.match(n) for r in rules)}
    assert skipped == {n for n in names if not isinstance(model.get_submodule(n), QuantLinear)}
    assert skipped == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "model.layers.0.self_attn.q_proj"}
    # our reader takes the same fields back, and GPTQModel's own ("format", no checkpoint_format)
    back = GPTQConfig.from_dict(qc)
    assert back.method == "rtn" and back.checkpoint_format == "gptq"
    peer = {"bits": 4, "group_size": 128, "quant_method": "gptq", "method": "gptq", "format": "gptq_v2",
            "sym": False, "damp_percent": 0.05, "dynamic": {"-:.*down_proj": {}}}
    assert GPTQConfig.from_dict(peer).checkpoint_format == "gptq_v2"
    with pytest.raises(ValueError, match="per-module overrides"):
        GPTQConfig.from_dict(dict(peer, dynamic={r"+:.*\.down_proj": {"bits": 8}}))
    with pytest.raises(ValueError, match="format='marlin'"):
        GPTQConfig.from_dict(dict(peer, format="marlin"))


def test_damp_percent_zero_is_refused():
    # GPTQModel refuses damp_percent outside (0, 1) when it loads the config we would write
    for bad in (0, 0.0, 1.0, -0.1, True, "0.01"):
        with pytest.raises(ValueError, match="damp_percent"):
            GPTQConfig(damp_percent=bad)
    assert GPTQConfig(damp=0.05).damp_percent == 0.05 and GPTQConfig(act_order=True).desc_act is True
    # on load an odd value is metadata only
    assert GPTQConfig.from_dict({"quant_method": "gptq", "bits": 4, "damp_percent": 0}).damp_percent == 0.01


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantized_tied_head_is_untied_and_saved_as_such(tmp_path, method):
    model = tiny("llama", tie_word_embeddings=True)
    embed = model.model.embed_tokens.weight.detach().clone()
    calib = inputs("llama", 2)
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method=method, lm_head=True), calib, progress=False)
    assert isinstance(model.lm_head, QuantLinear) and model.config.tie_word_embeddings is False
    assert torch.equal(model.model.embed_tokens.weight, embed)  # the input embedding keeps its dense weight
    slimformer.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["lm_head"] is True and cfg["tie_word_embeddings"] is False
    loaded = slimformer.load_pretrained(tmp_path)
    assert torch.equal(loaded.model.embed_tokens.weight, embed)
    assert torch.equal(output(loaded, calib[0]), output(model, calib[0]))


def test_head_quantized_by_replace_linear_is_saved_as_lm_head(tmp_path):
    model = tiny("llama", tie_word_embeddings=True)
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=32, method="rtn"), progress=False)
    replace_linear(model, lambda n, m: QuantLinear.from_linear(m, bits=4, group_size=32), include=("lm_head",),
                   exclude=(), progress=False)
    slimformer.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"]["lm_head"] is True and cfg["tie_word_embeddings"] is False
    b = inputs("llama", 1)[0]
    assert torch.equal(output(slimformer.load_pretrained(tmp_path), b), output(model, b))


def test_non_fp16_scales(tmp_path):
    from test_checkpoint import _read_all, write_hub_checkpoint
    good = tmp_path / "good"
    write_hub_checkpoint(good, "llama", bits=4, group_size=128, act_order=False, checkpoint_format="gptq")
    tensors = _read_all(good)
    cfg = (good / "config.json").read_text()
    ref = slimformer.load_pretrained(good)
    b = inputs("llama", 1)[0]

    def variant(name, change):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(cfg)
        t = dict(tensors)
        for k in [k for k in t if k.endswith(".scales")]:
            t[k] = change(t[k])
        save_file(t, str(d / "model.safetensors"))
        return d

    with warnings.catch_warnings():  # fp32 scales that fp16 holds exactly: loaded as they are, no warning
        warnings.simplefilter("error")
        exact = slimformer.load_pretrained(variant("fp32", lambda s: s.float()))
    assert torch.equal(output(exact, b), output(ref, b))
    with pytest.warns(RuntimeWarning, match=r"scales is torch.float32; the layer stores fp16, which rounds it"):
        slimformer.load_pretrained(variant("fp32-fine", lambda s: s.float() * (1 + 1e-5)))
    with pytest.raises(slimformer.CheckpointError, match="beyond the fp16 range"):
        slimformer.load_pretrained(variant("huge", lambda s: s.float() * 1e8))
    with pytest.raises(slimformer.CheckpointError, match=r"scales must be a floating-point tensor, got torch.int32"):
        slimformer.load_pretrained(variant("int", lambda s: (s.float() * 1000).to(torch.int32)))
