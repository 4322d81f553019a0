"""N:M sparsity: the compressed format, Sparse24Linear, the pruning algorithms against plain re-implementations of
their papers' equations, whole-model sparsify, and the compressed-tensors sparse-24-bitmask checkpoints."""
import json

import numpy as np
import pytest
import torch

import slimformer
from helpers import rel_err
from models import inputs, output, tiny
from slimformer import CheckpointError, GPTQConfig, QuantLinear, Sparse24Config, Sparse24Linear
from slimformer.hessian import HessianAccumulator
from slimformer.sparse24 import format as F
from slimformer.sparse24.algorithm import magnitude_prune, prune_weight, sparsegpt, wanda_prune


def correlated_inputs(rows, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g) / K ** 0.5 + torch.eye(K)
    scale = torch.exp(torch.randn(K, generator=g))  # uneven channel norms, as in transformers' activations
    return (torch.randn(rows, K, generator=g) @ mix) * scale


def hessian_of(x):
    acc = HessianAccumulator(x.shape[1])
    acc.add(x)
    return acc.hessian


# ------------------------------------------------------------------------------------------------------ format
def test_nm_mask_keeps_the_largest_and_breaks_ties_by_lower_column():
    s = torch.tensor([[1.0, 3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
    assert F.nm_mask(s, 2, 4).tolist() == [[False, True, True, False, True, True, False, False]]
    assert F.nm_mask(s, 1, 4).tolist() == [[False, True, False, False, True, False, False, False]]
    assert F.nm_mask(s, 4, 8).sum() == 4 and F.is_nm(F.nm_mask(torch.randn(5, 16), 4, 8), 4, 8)


@pytest.mark.parametrize("cols", [4, 12, 20, 64, 100])
def test_bitmask_packing_is_numpys_little_bit_order(cols):
    mask = F.nm_mask(torch.randn(7, cols), 2, 4)
    packed = F.pack_bitmask(mask)
    want = np.packbits(mask.numpy(), axis=-1, bitorder="little")
    assert packed.dtype == torch.uint8 and np.array_equal(packed.numpy(), want)
    assert torch.equal(F.unpack_bitmask(packed, cols), mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_compress_decompress_round_trip(n, m, dtype):
    w = torch.randn(9, 8 * m).to(dtype)
    mask = F.nm_mask(w.abs(), n, m)
    values, bitmask = F.compress(w, mask, n, m)
    assert values.shape == (9, 8 * n) and values.dtype == dtype
    assert torch.equal(F.decompress(values, bitmask, w.shape, n, m), w * mask)


def test_bad_masks_and_shapes_are_refused():
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match="not 2:4"):
        F.compress(w, torch.ones(4, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of 4"):
        F.nm_mask(torch.randn(4, 6))
    values, bitmask = F.compress(w, F.nm_mask(w.abs()))
    bad = bitmask.clone()
    bad[1, 0] = 0b0111_0011  # 3 kept in the second group
    with pytest.raises(ValueError, match="bitmask is not 2:4"):
        F.decompress(values, bad, w.shape)
    with pytest.raises(ValueError, match=r"must have shape \[4, 4\]"):
        F.decompress(values[:, :3], bitmask, w.shape)
    with pytest.raises(ValueError, match="0 < n < m"):
        F.check_nm(4, 4)
    with pytest.raises(TypeError, match="n must be an int"):
        F.check_nm(2.0, 4)


def test_reference_gemm_is_the_dense_product():
    w = torch.randn(33, 24, dtype=torch.float64)
    mask = F.nm_mask(w.abs())
    values, bitmask = F.compress(w, mask)
    x, b = torch.randn(5, 24, dtype=torch.float64), torch.randn(33, dtype=torch.float64)
    assert torch.allclose(F.reference_gemm(x, values, bitmask, b, 24), x @ (w * mask).t() + b, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ module
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_from_linear_is_magnitude_2_4_and_forwards_like_the_dense_layer(dtype):
    lin = torch.nn.Linear(40, 24).to(dtype)
    layer = Sparse24Linear.from_linear(lin)
    w = lin.weight.detach()
    assert torch.equal(layer.mask, F.nm_mask(w.abs()))
    assert torch.equal(layer.to_dense(), w * layer.mask)
    x = torch.randn(2, 3, 40).to(dtype)
    want = torch.nn.functional.linear(x.double(), (w * layer.mask).double(), lin.bias.double())
    assert rel_err(layer(x), want) < (1e-6 if dtype == torch.float32 else 1e-2)


def test_state_dict_round_trip_and_bad_state_dicts():
    layer = Sparse24Linear.from_linear(torch.nn.Linear(16, 8))
    fresh = Sparse24Linear(16, 8)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.to_dense(), layer.to_dense())
    sd = layer.state_dict()
    sd["bitmask"] = torch.full_like(sd["bitmask"], 0xFF)
    with pytest.raises(RuntimeError, match="bitmask is not 2:4"):
        Sparse24Linear(16, 8).load_state_dict(sd)


def test_module_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        Sparse24Linear(18, 8)
    with pytest.raises(ValueError, match="values dtype"):
        Sparse24Linear(16, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="nn.Linear"):
        Sparse24Linear.from_linear(torch.nn.Conv2d(3, 3, 1))
    bad = torch.nn.Linear(16, 8)
    bad.weight.data[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Sparse24Linear.from_linear(bad)
    with pytest.raises(ValueError, match="in_features=16"):
        Sparse24Linear(16, 8)(torch.randn(2, 12))


# -------------------------------------------------------------------------------------------------- algorithms
def plain_sparsegpt(W, H, n, m, damp):
    """SparseGPT from the paper's equations, in fp64, with no lazy batching and no Cholesky shortcut: visiting column
    j, the remaining columns S = j.. have inverse Hessian Hs = (H_damped[S, S])^-1; at the first column of each group
    the kept weights are the n largest w_c^2 / d_c^2 with d_c^2 = ((H_damped[c:, c:])^-1)_00; the column is set to its
    target t and the rest of the row moves by the OBS update -(w_j - t) / Hs_00 * Hs[0, :]."""
    W, H = W.double().clone(), H.double().clone()
    K = W.shape[1]
    H += damp * H.diagonal().mean() * torch.eye(K, dtype=torch.float64)
    d2 = torch.stack([torch.linalg.inv(H[c:, c:])[0, 0] for c in range(K)])
    mask = torch.zeros_like(W, dtype=torch.bool)
    for j in range(K):
        if j % m == 0:
            mask[:, j:j + m] = F.nm_mask(W[:, j:j + m] ** 2 / d2[j:j + m], n, m)
        Hs = torch.linalg.inv(H[j:, j:])
        t = torch.where(mask[:, j], W[:, j], torch.zeros_like(W[:, j]))
        W[:, j:] -= torch.outer((W[:, j] - t) / Hs[0, 0], Hs[0, :])
        W[:, j] = t
    return W, mask


@pytest.mark.parametrize("n,m,block", [(2, 4, 8), (2, 4, 128), (4, 8, 16)])
def test_sparsegpt_matches_the_papers_equations(n, m, block):
    x = correlated_inputs(256, 32)
    H = hessian_of(x)
    W = torch.randn(12, 32)
    r = sparsegpt(W, H, n=n, m=m, damp=0.01, block_size=block)
    want, mask = plain_sparsegpt(W, H, n, m, 0.01)
    assert torch.equal(r.mask, mask)
    assert F.is_nm(r.mask, n, m) and torch.equal(r.weight == 0, ~r.mask | (r.weight == 0))
    assert rel_err(r.weight, want) < 1e-5


def test_magnitude_and_wanda_match_their_definitions():
    W = torch.randn(6, 16)
    norms = torch.rand(16) + 0.1
    r = magnitude_prune(W)
    for i in range(6):
        for g in range(4):
            kept = W[i, 4 * g:4 * g + 4].abs().topk(2).indices + 4 * g
            assert set(r.mask[i].nonzero().flatten().tolist()) >= set(kept.tolist())
    w = wanda_prune(W, norms)
    assert torch.equal(w.mask, F.nm_mask(W.abs() * norms, 2, 4))
    assert torch.equal(w.weight, W * w.mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_sparsegpt_beats_wanda_beats_magnitude_on_correlated_inputs(n, m):
    x = correlated_inputs(512, 64, seed=3)
    H = hessian_of(x)
    W = torch.randn(48, 64)
    errs = {meth: prune_weight(W, H, n=n, m=m, method=meth, input_norms=x.norm(dim=0)).prune_error
            for meth in ("sparsegpt", "wanda", "magnitude")}
    assert errs["sparsegpt"] < errs["wanda"] < errs["magnitude"], errs
    # the reported error is the layer output's relative error on the calibration inputs
    layer = prune_weight(W, H, n=n, m=m, method="sparsegpt")
    got = (x @ layer.to_dense().t() - x @ W.t()).norm() ** 2 / (x @ W.t()).norm() ** 2
    assert abs(got.item() - errs["sparsegpt"]) < 1e-4 * max(got.item(), 1e-6) + 1e-7


def test_joint_sparsegpt_quantization_keeps_the_grid_and_the_mask():
    x = correlated_inputs(256, 64)
    H = hessian_of(x)
    W = torch.randn(16, 64)
    r = sparsegpt(W, H, bits=4, group_size=32)
    g_idx = torch.arange(64) // 32
    deq = ((r.q.t().float() - r.zeros.float()[g_idx].t()) * r.scales.float()[g_idx].t())
    assert torch.equal(r.weight, deq * r.mask)
    assert F.is_nm(r.mask, 2, 4) and int(r.q.max()) <= 15 and int(r.q.min()) >= 0
    plain = sparsegpt(W, H)
    assert plain.error < r.error < 4 * plain.error + 0.05  # quantization costs something, not everything


def test_algorithm_bad_input():
    W, H = torch.randn(4, 16), torch.eye(16)
    with pytest.raises(ValueError, match="needs the layer's Hessian"):
        prune_weight(W, method="sparsegpt")
    with pytest.raises(ValueError, match="needs the input-channel norms"):
        prune_weight(W, method="wanda")
    with pytest.raises(ValueError, match="method must be one of"):
        prune_weight(W, H, method="obs")
    with pytest.raises(ValueError, match=r"\[16, 16\]"):
        sparsegpt(W, torch.eye(12))
    with pytest.raises(ValueError, match="multiple of m=4"):
        sparsegpt(W, H, block_size=6)
    with pytest.raises(ValueError, match=r"input_norms must be a \[16\]"):
        wanda_prune(W, torch.ones(8))
    with pytest.raises(ValueError, match="multiple of 4"):
        sparsegpt(torch.randn(4, 18), torch.eye(18))


# ------------------------------------------------------------------------------------------------ whole model
# (FFN linears per block, their name endings; ViT's differ between transformers 4.x and 5.x)
FFN = {"llama": (3, ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")), "opt": (2, ("fc1", "fc2")),
       "gpt2": (2, ("mlp.c_fc", "mlp.c_proj")), "bert": (2, ("intermediate.dense", "output.dense")),
       "vit": (2, ("intermediate.dense", "output.dense", "mlp.fc1", "mlp.fc2"))}


@pytest.mark.parametrize("arch", sorted(FFN))
def test_sparsify_prunes_the_ffn_linears_only(arch):
    model = tiny(arch)
    calib = inputs(arch, 3, length=16)
    report = []
    slimformer.sparsify(model, Sparse24Config(), calib, progress=False, report=report)
    pruned = sorted(n for n, mod in model.named_modules() if isinstance(mod, Sparse24Linear))
    assert pruned == sorted(r.name for r in report)
    per_block, endings = FFN[arch]
    assert len(pruned) == 2 * per_block and all(n.endswith(endings) for n in pruned)
    assert not any(".attention." in n or ".attn." in n or "self_attn" in n for n in pruned)
    assert all(0 <= r.error < 1 and r.method == "sparsegpt" for r in report)
    assert torch.isfinite(output(model, calib[0])).all()


def test_sparsify_methods_and_targets_on_a_tiny_llama():
    calib = inputs("llama", 4, length=24)
    ref = tiny("llama")
    want = output(ref, calib[0])
    errs = {}
    for method in ("sparsegpt", "wanda", "magnitude"):
        model = tiny("llama")
        model.load_state_dict(ref.state_dict())
        slimformer.sparsify(model, Sparse24Config(method=method, targets="all"), calib, progress=False)
        assert sum(isinstance(mod, Sparse24Linear) for mod in model.modules()) == 14
        errs[method] = rel_err(output(model, calib[0]), want)
    assert errs["sparsegpt"] < errs["magnitude"], errs


def test_sparsify_bad_input_leaves_the_model_dense():
    model = tiny("llama")
    with pytest.raises(ValueError, match="needs calibration_data"):
        slimformer.sparsify(model, Sparse24Config(method="wanda"))
    with pytest.raises(ValueError, match="method must be one of"):
        Sparse24Config(method="obs")
    with pytest.raises(ValueError, match="no linear layers"):
        slimformer.sparsify(model, Sparse24Config(method="magnitude", targets=["*nothing*"]), progress=False)
    odd = tiny("llama", hidden=128, intermediate=258)
    with pytest.raises(ValueError, match="multiple of 4"):
        slimformer.sparsify(odd, Sparse24Config(method="magnitude"), progress=False)
    assert not any(isinstance(mod, Sparse24Linear) for mod in odd.modules())


# ------------------------------------------------------------------------------------------------ checkpoints
def _sparse_model(arch="llama", **cfg):
    model = tiny(arch)
    slimformer.sparsify(model, Sparse24Config(**cfg), inputs(arch, 2, length=16), progress=False)
    return model


def test_save_writes_the_compressed_tensors_layout_and_loads_back(tmp_path):
    model = _sparse_model()
    slimformer.save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors"
    assert cfg["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert cfg["sparsity_config"]["sparsity_structure"] == "2:4"
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        name = "model.layers.0.mlp.down_proj"
        assert {f"{name}.compressed", f"{name}.bitmask", f"{name}.shape"} <= keys and f"{name}.weight" not in keys
        assert f.get_tensor(f"{name}.shape").tolist() == [[128], [256]]
    loaded = slimformer.load_pretrained(tmp_path)
    for n, mod in model.named_modules():
        if isinstance(mod, Sparse24Linear):
            assert torch.equal(loaded.get_submodule(n).to_dense(), mod.to_dense())
    batch = inputs("llama", 1, length=16)[0]
    assert torch.equal(output(loaded, batch), output(model, batch))


def test_4_8_and_mixed_with_gptq_round_trip(tmp_path):
    model = _sparse_model(n=4, m=8, method="magnitude")
    slimformer.save_pretrained(model, tmp_path / "48")
    assert json.loads((tmp_path / "48" / "config.json").read_text())["quantization_config"]["sparsity_config"][
        "sparsity_structure"] == "4:8"
    loaded = slimformer.load_pretrained(tmp_path / "48")
    assert {(m.n, m.m) for m in loaded.modules() if isinstance(m, Sparse24Linear)} == {(4, 8)}
    # 2:4 FFN + int4 attention in one checkpoint
    mixed = _sparse_model(method="magnitude")
    slimformer.quantize(mixed, GPTQConfig(method="rtn", modules_to_not_convert=["*.mlp.*"]), progress=False)
    slimformer.save_pretrained(mixed, tmp_path / "mixed")
    qc = json.loads((tmp_path / "mixed" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "slimformer" and set(qc["methods"]) == {"gptq", "sparse24"}
    back = slimformer.load_pretrained(tmp_path / "mixed")
    assert sum(isinstance(m, QuantLinear) for m in back.modules()) == 8
    assert sum(isinstance(m, Sparse24Linear) for m in back.modules()) == 6
    batch = inputs("llama", 1, length=16)[0]
    assert torch.equal(output(back, batch), output(mixed, batch))


def test_corrupt_sparse_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    model = _sparse_model(method="magnitude")
    slimformer.save_pretrained(model, tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj"
    for leaf, bad, msg in (("bitmask", torch.full_like(tensors[f"{name}.bitmask"], 0xFF), "bitmask is not 2:4"),
                           ("shape", torch.tensor([[128], [256]]), r"shape says \[128, 256\]"),
                           ("compressed", tensors[f"{name}.compressed"].to(torch.int32), "must be fp32, bf16 or fp16"),
                           ("compressed", tensors[f"{name}.compressed"][:, :-1].contiguous(), "must have shape")):
        broken = dict(tensors)
        broken[f"{name}.{leaf}"] = bad
        save_file(broken, str(tmp_path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=msg):
            slimformer.load_pretrained(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["quantization_config"]["config_groups"] = {"group_0": {"weights": {"num_bits": 4}}}
    cfg["quantization_config"]["format"] = "marlin-24"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="combines sparsity with quantization"):
        slimformer.load_pretrained(tmp_path)


# ------------------------------------------------------------------------------ interop with compressed-tensors
def _ct():
    return pytest.importorskip("compressed_tensors", reason="compressed-tensors 0.14.0.1 is installed by `make` "
                               "(--no-deps); without it the peer cannot be run")


def test_a_checkpoint_compressed_tensors_writes_loads_exactly(tmp_path):
    _ct()
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig
    from safetensors.torch import save_file
    model = tiny("llama")
    pruned = _sparse_model(method="magnitude")
    dense_weights = {}
    for n, mod in pruned.named_modules():  # a dense model whose FFN weights are 2:4, as llm-compressor leaves it
        if isinstance(mod, Sparse24Linear):
            model.get_submodule(n).weight.data.copy_(mod.to_dense())
            dense_weights[n] = mod.to_dense()
    for n, p in pruned.named_parameters():
        model.get_parameter(n).data.copy_(p)
    names = sorted(dense_weights)
    config = SparsityCompressionConfig.load_from_registry("sparse-24-bitmask", targets=names, ignore=[],
                                                          sparsity_structure="2:4")
    mc = ModelCompressor(sparsity_config=config)
    state = mc.compress(model)
    model.config.architectures = ["LlamaForCausalLM"]
    model.config.save_pretrained(str(tmp_path))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    mc.update_config(str(tmp_path))
    loaded = slimformer.load_pretrained(tmp_path)
    got = {n: m.to_dense() for n, m in loaded.named_modules() if isinstance(m, Sparse24Linear)}
    assert sorted(got) == names
    for n in names:
        assert torch.equal(got[n], dense_weights[n])
    batch = inputs("llama", 1, length=16)[0]
    assert rel_err(output(loaded, batch), output(model, batch)) < 1e-5  # the sparse kernel sums in its own order


def test_compressed_tensors_decompresses_what_we_save(tmp_path):
    _ct()
    from compressed_tensors.compressors import ModelCompressor
    model = _sparse_model()
    model = model.to(torch.bfloat16)
    slimformer.save_pretrained(model, tmp_path)
    mc = ModelCompressor.from_pretrained(str(tmp_path))
    dense = dict(mc.sparsity_compressor.decompress(str(tmp_path)))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Sparse24Linear)}
    assert len(layers) == 6
    for n, mod in layers.items():
        got = dense[f"{n}.weight"]
        assert got.dtype == torch.bfloat16 and torch.equal(got, mod.to_dense())


def test_sparsify_joint_quantization_puts_kept_weights_on_the_grid():
    model = tiny("llama")
    report = []
    slimformer.sparsify(model, Sparse24Config(quantize=GPTQConfig(bits=4, group_size=32)), inputs("llama", 2, length=16),
                        progress=False, report=report)
    assert all(r.bits == 4 and r.group_size == 32 for r in report)
    layer = model.get_submodule("model.layers.0.mlp.down_proj")
    w = layer.to_dense().t()  # [in, out]; per 32-input group and column at most 16 distinct kept levels (+ 0)
    for g in range(w.shape[0] // 32):
        block = w[32 * g:32 * g + 32]
        assert max(len(torch.unique(block[:, j])) for j in range(block.shape[1])) <= 17
    with pytest.raises(ValueError, match="needs method='sparsegpt'"):
        Sparse24Config(method="wanda", quantize=GPTQConfig())
    with pytest.raises(TypeError, match="GPTQConfig"):
        Sparse24Config(quantize={"bits": 4})
