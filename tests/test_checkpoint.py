"""Hub GPTQ checkpoints: loading AutoGPTQ/GPTQModel-style files built here tensor by tensor, exact
save_pretrained -> load_pretrained round trips, what is on disk, and broken checkpoints."""
import json
import os
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import slimformer
from helpers import random_hub_layer
from models import inputs, output, tiny
from slimformer import CheckpointError, GPTQConfig, QuantLinear
from slimformer.gptq import format as F
from slimformer.hf import is_linear_like


def write_hub_checkpoint(path, arch, *, bits, group_size, act_order, checkpoint_format, shards=1, legacy=False):
    """Writes a GPTQ checkpoint the way AutoGPTQ (v1) / GPTQModel (v2) lay it out: random integers for every block
    linear, fp16 everything else. Returns the dense float32 model that computes exactly what it describes."""
    torch.manual_seed(0)
    dense = tiny(arch, hidden=256, intermediate=512)
    tensors = {}
    for name, module in dense.named_modules():
        if not is_linear_like(module) or not (".layers." in name or ".h." in name or ".layer." in name):
            continue
        N, K = slimformer.hf.linear_weight(module).shape
        hub, _, _ = random_hub_layer(K, N, bits, group_size, act_order=act_order, checkpoint_format=checkpoint_format,
                                     bias=module.bias is not None)
        w = F.reference_dequantize(hub["qweight"], hub["qzeros"], hub["scales"], hub["g_idx"], bits=bits,
                                   group_size=F.resolve_group_size(group_size, K), in_features=K, out_features=N,
                                   checkpoint_format=checkpoint_format, dtype=torch.float32)
        module.weight.data = w.t().contiguous() if isinstance(module, torch.nn.Linear) else w.contiguous()
        for leaf, t in hub.items():
            if t is not None:
                tensors[f"{name}.{leaf}"] = t
        if module.bias is not None:
            module.bias.data = hub["bias"].float()
    quantized = {k.rsplit(".", 1)[0] for k in tensors}
    for key, t in dense.state_dict().items():
        if key.rsplit(".", 1)[0] not in quantized:
            tensors[key] = t.to(torch.float16).contiguous()
            t.copy_(t.to(torch.float16))  # the dense model computes with what the file holds
    if dense.config.tie_word_embeddings and "lm_head.weight" in tensors:
        del tensors["lm_head.weight"]
    path.mkdir(parents=True, exist_ok=True)
    keys = sorted(tensors)
    if shards == 1:
        save_file({k: tensors[k] for k in keys}, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i in range(shards):
            part = keys[i::shards]
            fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({k: tensors[k] for k in part}, str(path / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = dense.config.to_dict()
    cfg["architectures"] = [type(dense).__name__]
    qc = {"bits": bits, "group_size": group_size, "desc_act": act_order, "sym": False, "damp_percent": 0.01,
          "static_groups": False, "true_sequential": True, "quant_method": "gptq"}
    if checkpoint_format == "gptq_v2":
        qc["meta"] = {"quantizer": ["gptqmodel:x"], "checkpoint_format": "gptq_v2"}
    if legacy:
        (path / "quantize_config.json").write_text(json.dumps({**qc, "model_file_base_name": "model"}))
    else:
        cfg["quantization_config"] = qc
    (path / "config.json").write_text(json.dumps(cfg, default=str))
    return dense


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
def test_hub_checkpoint_reproduces_dequantized_logits(tmp_path, bits, checkpoint_format, act_order):
    dense = write_hub_checkpoint(tmp_path, "llama", bits=bits, group_size=128, act_order=act_order,
                                 checkpoint_format=checkpoint_format)
    model = slimformer.load_pretrained(tmp_path)
    assert isinstance(model.model.layers[1].mlp.down_proj, QuantLinear)
    assert (model.model.layers[0].self_attn.q_proj.perm is not None) == act_order
    batch = inputs("llama", 1, length=40)[0]
    ref, out = output(dense, batch), output(model, batch)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "opt", "bert"])
def test_hub_checkpoint_other_architectures_sharded_and_legacy(tmp_path, arch):
    dense = write_hub_checkpoint(tmp_path, arch, bits=4, group_size=-1, act_order=False, checkpoint_format="gptq",
                                 shards=3, legacy=arch == "opt")
    model = slimformer.load_pretrained(tmp_path)
    batch = inputs(arch, 1, length=40)[0]
    ref, out = output(dense, batch), output(model, batch)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-4


@pytest.mark.parametrize("arch,cfg", [("llama", GPTQConfig(bits=4, group_size=64, desc_act=True)),
                                      ("gpt2", GPTQConfig(bits=3, group_size=128, sym=False)),
                                      ("qwen2", GPTQConfig(bits=4, group_size=-1, lm_head=True)),
                                      ("bert", GPTQConfig(bits=4, group_size=32, desc_act=True, static_groups=True)),
                                      ("vit", GPTQConfig(bits=8, group_size=64))])
def test_save_load_round_trip_is_exact(tmp_path, arch, cfg):
    model = tiny(arch)
    calib = inputs(arch, 3)
    slimformer.quantize(model, cfg, calib, progress=False)
    slimformer.save_pretrained(model, tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    loaded = slimformer.load_pretrained(tmp_path)
    assert type(loaded) is type(model)
    for b in calib:
        assert torch.equal(output(loaded, b), output(model, b))
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "gptq" and saved["bits"] == cfg.bits and saved["group_size"] == cfg.group_size
    assert saved["desc_act"] == cfg.desc_act
    again = tmp_path / "again"
    slimformer.save_pretrained(loaded, again)
    a = _read_all(tmp_path)
    b = _read_all(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _read_all(path):
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            out.update({k: sf.get_tensor(k) for k in sf.keys()})
    return out


def test_what_is_saved_is_the_hub_layout(tmp_path):
    model = tiny("llama", hidden=256, tie_word_embeddings=True)
    slimformer.quantize(model, GPTQConfig(bits=3, group_size=128, desc_act=True), inputs("llama", 2), progress=False)
    slimformer.save_pretrained(model, tmp_path)
    t = _read_all(tmp_path)
    K = N = 256
    p = "model.layers.0.self_attn.q_proj"
    assert t[f"{p}.qweight"].dtype == torch.int32 and t[f"{p}.qweight"].shape == (K * 3 // 32, N)
    assert t[f"{p}.qzeros"].dtype == torch.int32 and t[f"{p}.qzeros"].shape == (2, N * 3 // 32)
    assert t[f"{p}.scales"].dtype == torch.float16 and t[f"{p}.scales"].shape == (2, N)
    assert t[f"{p}.g_idx"].dtype == torch.int32 and t[f"{p}.g_idx"].shape == (K,)
    assert f"{p}.weight" not in t and "lm_head.weight" not in t  # tied head stored once
    # the integers on disk are the ones the module computes with
    layer = model.get_submodule(p)
    w = F.reference_dequantize(t[f"{p}.qweight"], t[f"{p}.qzeros"], t[f"{p}.scales"], t[f"{p}.g_idx"], bits=3,
                               group_size=128, in_features=K, out_features=N, dtype=torch.float32)
    assert torch.allclose(w.t(), layer.dequantize(), atol=1e-6)
    legacy = json.loads((tmp_path / "quantize_config.json").read_text())
    assert legacy["bits"] == 3 and legacy["desc_act"] is True


def test_asymmetric_models_save_as_v2(tmp_path):
    # asymmetric -> gptq_v2 by default (GPTQModel refuses asymmetric v1 files it did not write); v1 on request
    model = tiny("llama")
    layer = model.model.layers[0].mlp.up_proj
    layer.weight.data = layer.weight.data.abs()  # all-positive rows: min 0 -> zero point 0 in asym
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=64, sym=False, method="rtn"), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slimformer.save_pretrained(model, tmp_path / "auto")
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())["quantization_config"]
    assert saved["checkpoint_format"] == "gptq_v2" and saved["sym"] is False
    b = inputs("llama", 1)[0]
    assert torch.equal(output(slimformer.load_pretrained(tmp_path / "auto"), b), output(model, b))
    # v1 asked for: the zero point of 0 still forces v2 (with a warning)
    model.config.quantization_config["checkpoint_format"] = "gptq"
    with pytest.warns(RuntimeWarning, match="zero point of 0"):
        slimformer.save_pretrained(model, tmp_path / "v1")
    assert json.loads((tmp_path / "v1" / "config.json").read_text())["quantization_config"]["checkpoint_format"] \
        == "gptq_v2"
    assert torch.equal(output(slimformer.load_pretrained(tmp_path / "v1"), b), output(model, b))
    # ... and without one, v1 is written as asked, with a warning that peers refuse asymmetric v1
    model = tiny("llama")
    slimformer.quantize(model, GPTQConfig(bits=4, group_size=64, sym=False, method="rtn", checkpoint_format="gptq"),
                        progress=False)
    assert all(m.checkpoint_format == "gptq" for m in model.modules() if isinstance(m, QuantLinear))
    with pytest.warns(RuntimeWarning, match="GPTQModel refuses"):
        slimformer.save_pretrained(model, tmp_path / "v1b")
    assert json.loads((tmp_path / "v1b" / "config.json").read_text())["quantization_config"]["checkpoint_format"] \
        == "gptq"
    assert torch.equal(output(slimformer.load_pretrained(tmp_path / "v1b"), b), output(model, b))


def test_broken_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError):
        slimformer.load_pretrained(tmp_path / "nowhere")
    good = tmp_path / "good"
    write_hub_checkpoint(good, "llama", bits=4, group_size=128, act_order=False, checkpoint_format="gptq")
    cfg = json.loads((good / "config.json").read_text())
    tensors = _read_all(good)

    def variant(name, tensors=tensors, cfg=cfg, weights=True):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        if weights:
            save_file(tensors, str(d / "model.safetensors"))
        return d

    d = variant("pickle", weights=False)
    (d / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="safetensors only"):
        slimformer.load_pretrained(d)
    with pytest.raises(CheckpointError, match="no config.json"):
        (tmp_path / "noconfig").mkdir()
        slimformer.load_pretrained(tmp_path / "noconfig")
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.gate_proj.qzeros"}
    with pytest.raises(CheckpointError, match=r"gate_proj.*qzeros"):
        slimformer.load_pretrained(variant("missing", missing))
    misshaped = dict(tensors)
    misshaped["model.layers.0.self_attn.o_proj.qweight"] = misshaped["model.layers.0.self_attn.o_proj.qweight"][:, :64].contiguous()
    with pytest.raises(CheckpointError, match=r"o_proj(.|\n)*qweight must have shape"):
        slimformer.load_pretrained(variant("misshaped", misshaped))
    wrong_dtype = dict(tensors)
    wrong_dtype["model.layers.0.self_attn.k_proj.scales"] = wrong_dtype["model.layers.0.self_attn.k_proj.scales"][:1]
    with pytest.raises(CheckpointError, match="k_proj"):
        slimformer.load_pretrained(variant("badscales", wrong_dtype))
    smaller = dict(cfg, hidden_size=128)  # config/weight mismatch
    with pytest.raises(CheckpointError, match="mismatch"):
        slimformer.load_pretrained(variant("mismatch", cfg=smaller))
    no_q = {k: v for k, v in cfg.items() if k != "quantization_config"}
    with pytest.raises(CheckpointError, match="not a compressed checkpoint"):
        slimformer.load_pretrained(variant("noquant", cfg=no_q))
    bad_bits = dict(cfg, quantization_config=dict(cfg["quantization_config"], bits=5))
    with pytest.raises(ValueError, match="bits must be one of"):
        slimformer.load_pretrained(variant("badbits", cfg=bad_bits))
    extra = dict(tensors, **{"model.layers.7.mlp.up_proj.qweight": tensors["model.layers.0.mlp.up_proj.qweight"].clone()})
    with pytest.raises(CheckpointError, match="layers.7"):
        slimformer.load_pretrained(variant("extra", extra))
    d = variant("corrupt")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="safetensors"):
        slimformer.load_pretrained(d)
    dense_model = tiny("llama")
    with pytest.raises(ValueError, match=r"no compressed layers \(QuantLinear, Sparse24Linear, Sparse24QuantLinear\)"):
        slimformer.save_pretrained(dense_model, tmp_path / "dense")


def test_bad_checkpoint_inputs_are_named(tmp_path):
    good = tmp_path / "good"
    write_hub_checkpoint(good, "llama", bits=4, group_size=32, act_order=True, checkpoint_format="gptq", shards=2)
    cfg = json.loads((good / "config.json").read_text())
    tensors = _read_all(good)
    index = json.loads((good / "model.safetensors.index.json").read_text())
    layer = "model.layers.0.mlp.up_proj"

    def variant(name, tensors=tensors, cfg=cfg, shards=None):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        if shards is None:
            save_file(tensors, str(d / "model.safetensors"))
        else:
            for fname, part in shards.items():
                save_file(part, str(d / fname))
        return d

    # act-order layer without its g_idx: its rows' groups are unknown (used to load in natural order)
    with pytest.raises(CheckpointError, match=f"{layer}: the checkpoint is act-order.*no g_idx"):
        slimformer.load_pretrained(variant("no-gidx", {k: v for k, v in tensors.items() if k != f"{layer}.g_idx"}))
    # float g_idx, and g_idx beyond int32 / beyond the groups: checked before any cast
    with pytest.raises(CheckpointError, match=rf"{layer}.g_idx must be an integer tensor, got torch.float32"):
        slimformer.load_pretrained(variant("float-gidx", dict(tensors, **{f"{layer}.g_idx": tensors[f"{layer}.g_idx"].float()})))
    big = tensors[f"{layer}.g_idx"].to(torch.int64)
    big[5] = 2 ** 32 + 1  # would wrap to 1 as int32
    with pytest.raises(CheckpointError, match=rf"{layer}.g_idx values must lie in \[0, 8\)"):
        slimformer.load_pretrained(variant("huge-gidx", dict(tensors, **{f"{layer}.g_idx": big})))
    # the same tensor in two shards: refused, not "one silently wins"
    keys = sorted(tensors)
    dup = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in keys[:len(keys) // 2] + [keys[-1]]},
           "model-00002-of-00002.safetensors": {k: tensors[k] for k in keys[len(keys) // 2:]}}
    with pytest.raises(CheckpointError, match="stored twice"):
        slimformer.load_pretrained(variant("dup", shards=dup))

    def with_index(name, weight_map):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        for f in sorted(good.glob("*.safetensors")):
            (d / f.name).write_bytes(f.read_bytes())
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return d

    wm = index["weight_map"]
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((good / "model-00001-of-00002.safetensors").read_bytes())
    for name, target in (("dotdot", "../outside.safetensors"), ("absolute", str(outside))):
        d = with_index(name, dict(wm, **{keys[0]: target}))
        with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
            slimformer.load_pretrained(d)
    d = with_index("fifo", dict(wm, **{keys[0]: "pipe.safetensors"}))
    os.mkfifo(d / "pipe.safetensors")
    with pytest.raises(CheckpointError, match="not a regular file"):  # used to block forever
        slimformer.load_pretrained(d)
    d = with_index("badmap", {keys[0]: 3})
    with pytest.raises(CheckpointError, match="weight_map' must map tensor names to shard file names"):
        slimformer.load_pretrained(d)
    # a path that is a file, bits given as a string
    with pytest.raises(NotADirectoryError, match="is a file; load_pretrained expects a checkpoint directory"):
        slimformer.load_pretrained(good / "config.json")
    bad = dict(cfg, quantization_config=dict(cfg["quantization_config"], bits="4"))
    with pytest.raises(CheckpointError, match=r"GPTQConfig.bits must be an int, got '4'"):
        slimformer.load_pretrained(variant("strbits", cfg=bad))
    # architectures naming a class transformers does not have: an error, not a silent AutoModel
    with pytest.raises(CheckpointError, match=r"\['NoSuchModel'\].*model_class="):
        slimformer.load_pretrained(variant("arch", cfg=dict(cfg, architectures=["NoSuchModel"])))


def test_saved_architecture_is_the_models_own_class(tmp_path):
    # AutoModel on a *ForCausalLM config gives a LlamaModel; the checkpoint must say LlamaModel
    import transformers
    dense = tiny("llama")
    base = transformers.LlamaModel(dense.config).eval()
    assert base.config.architectures is None or base.config.architectures != ["LlamaModel"]
    base.config.architectures = ["LlamaForCausalLM"]
    slimformer.quantize(base, GPTQConfig(bits=4, group_size=32, method="rtn"), progress=False)
    slimformer.save_pretrained(base, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["LlamaModel"]
    loaded = slimformer.load_pretrained(tmp_path)
    assert type(loaded) is transformers.LlamaModel
    b = inputs("llama", 1)[0]
    assert torch.equal(output(loaded, b), output(base, b))
