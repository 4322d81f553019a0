"""2:4 + int4 (Sparse24QuantLinear, slimformer::sparse24_int4_gemm): the packed format, its kernel layout (tiles) and
its spec, the kernels on every ISA path (the unpacked route, and the fused bf16 kernel where the CPU has it) against
the float64 reference, the joint SparseGPT + GPTQ pass producing it, and its checkpoint."""
import json

import pytest
import torch

import slimformer
from models import inputs, output, tiny
from slimformer import CheckpointError, GPTQConfig, Sparse24Config, Sparse24QuantLinear
from slimformer.sparse24 import format as F
from slimformer.sparse24.algorithm import sparsegpt

SMALL_M, LARGE_M = "1000000", "1"  # SLIMFORMER_SPARSE24_LARGE_M forcing one path or the other
TILES = "tiles"  # LARGE_M with the large-M bf16 kernel switched off (SLIMFORMER_SPARSE24_WIDE=0)


def use_path(monkeypatch, path):
    monkeypatch.setenv("SLIMFORMER_SPARSE24_LARGE_M", SMALL_M if path == SMALL_M else LARGE_M)
    monkeypatch.setenv("SLIMFORMER_SPARSE24_WIDE", "0" if path == TILES else "1")


def plain_dequantize(layer):
    """The dense weight from the definition: kept weight (code - zero) * scale of its column's group, else 0."""
    N, K = layer.out_features, layer.in_features
    gs = K if layer.group_size == -1 else layer.group_size
    mask = F.unpack_bitmask(layer.bitmask, K)
    codes = F.unpack_int4(layer.qvalues)
    w = torch.zeros(N, K, dtype=torch.float64)
    for n in range(N):
        cols = mask[n].nonzero().flatten()
        for j, c in enumerate(cols.tolist()):
            g = c // gs
            w[n, c] = (codes[n, j].item() - layer.zeros[n, g].item()) * layer.scales[n, g].double().item()
    return w


def test_int4_packing_and_the_spec():
    codes = torch.randint(0, 16, (5, 12))
    assert torch.equal(F.unpack_int4(F.pack_int4(codes)), codes)
    assert F.pack_int4(torch.tensor([[1, 2]])).item() == 0x21  # low nibble first
    with pytest.raises(ValueError, match="0..15"):
        F.pack_int4(torch.tensor([[16, 0]]))
    with pytest.raises(ValueError, match="even number"):
        F.pack_int4(torch.zeros(2, 3, dtype=torch.int32))
    for gs, sym in ((4, True), (8, False), (-1, True), (12, False)):
        layer = Sparse24QuantLinear.from_dense(torch.randn(6, 24), group_size=gs, sym=sym)
        assert torch.allclose(layer.to_dense().double(), plain_dequantize(layer), rtol=0, atol=1e-6)
        assert (layer.zeros == 8).all() == sym


@pytest.mark.parametrize("N,K", [(1, 4), (5, 12), (7, 260), (9, 512), (4, 128), (3, 200)])
def test_tiles_round_trip_and_layout(N, K):
    mask = F.nm_mask(torch.randn(N, K).abs())
    codes = torch.randint(0, 16, (N, K // 2))
    q, b = F.pack_int4(codes), F.pack_bitmask(mask)
    tiles = F.pack_int4_tiles(q, b, K)
    assert tiles.shape == F.int4_tiles_shape(N, K)
    back = F.unpack_int4_tiles(tiles, N, K)
    assert torch.equal(back[0], q) and torch.equal(back[1], b)
    # the layout, read by hand: row n, kept value j: tile n // 4, block j // 64, code byte (n % 4) * 32 + j % 32,
    # the high nibble for j % 64 >= 32; group g's positions at 128 + (n % 4) * 16 + (g % 32) // 2
    n, j, g = N - 1, K // 2 - 1, K // 4 - 1
    blk = tiles[n // 4, (j // 64) * 192:(j // 64 + 1) * 192]
    assert (blk[(n % 4) * 32 + j % 32].item() >> (4 if j % 64 >= 32 else 0)) & 15 == codes[n, j].item()
    blk = tiles[n // 4, (g // 32) * 192:(g // 32 + 1) * 192]
    nib = (blk[128 + (n % 4) * 16 + (g % 32) // 2].item() >> (4 * (g % 2))) & 15
    cols = mask[n, 4 * g:4 * g + 4].nonzero().flatten().tolist()
    assert nib == cols[0] | cols[1] << 2
    bad = tiles.clone()
    bad[0, 128] = 0x11  # first column == second column
    with pytest.raises(ValueError, match="position nibble"):
        F.unpack_int4_tiles(bad, N, K)


def test_from_dense_keeps_the_magnitude_mask_and_is_close():
    w = torch.randn(16, 256)
    layer = Sparse24QuantLinear.from_dense(w, group_size=64)
    mask = F.nm_mask(w.abs())
    assert torch.equal(layer.mask, mask)
    err = ((layer.to_dense() - w * mask).norm() / (w * mask).norm()).item()
    assert err < 0.1  # 4-bit RTN of the kept weights
    assert layer.qvalues.shape == (16, 64) and layer.scales.shape == (16, 4) and layer.zeros.dtype == torch.uint8
    assert layer.tiles.shape == (4, 2 * 192)
    assert set(layer.state_dict()) == {"qvalues", "bitmask", "scales", "zeros"}
    fresh = Sparse24QuantLinear(256, 16, bias=False, group_size=64)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.tiles, layer.tiles) and torch.equal(fresh.to_dense(), layer.to_dense())


def test_module_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        Sparse24QuantLinear(10, 4)
    with pytest.raises(ValueError, match="multiple of 4 input columns"):
        Sparse24QuantLinear(16, 4, group_size=6)
    with pytest.raises(ValueError, match="not 2:4"):
        Sparse24QuantLinear.from_quantized(torch.zeros(2, 8, dtype=torch.int32), torch.ones(2, 8, dtype=torch.bool),
                                           torch.ones(2, 2), torch.full((2, 2), 8), 4)
    mask = F.nm_mask(torch.randn(2, 8).abs())
    with pytest.raises(ValueError, match=r"scales and zeros must be \[2, 2\]"):
        Sparse24QuantLinear.from_quantized(torch.zeros(2, 8, dtype=torch.int32), mask, torch.ones(2, 3),
                                           torch.full((2, 3), 8), 4)
    with pytest.raises(ValueError, match="zero points must lie in 0..15"):
        Sparse24QuantLinear.from_quantized(torch.zeros(2, 8, dtype=torch.int32), mask, torch.ones(2, 2),
                                           torch.full((2, 2), 16), 4)
    layer = Sparse24QuantLinear.from_dense(torch.randn(4, 16), group_size=8)
    with pytest.raises(ValueError, match="in_features=16"):
        layer(torch.randn(2, 12))
    state = layer.state_dict()
    state["zeros"] = torch.full_like(state["zeros"], 20)
    with pytest.raises(RuntimeError, match="zero points must lie in 0..15"):
        Sparse24QuantLinear(16, 4, group_size=8).load_state_dict(state)


def error(y, x, layer):
    ref = F.reference_int4_gemm(x.double(), layer.qvalues, layer.bitmask, layer.scales, layer.zeros,
                                None if layer.bias is None else layer.bias.double(), layer.in_features,
                                layer.group_size)
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def run(x, layer):
    return torch.ops.slimformer.sparse24_int4_gemm(x, layer.tiles, layer.scales, layer.zeros, layer.bias,
                                                   layer.in_features, layer.group_size)


# K and group sizes the fused bf16 kernel takes (K % 64 == 0, group % 64 == 0: whole and half last blocks, a last
# group shorter than the others, one group) and ones it leaves to the unpacked route
@pytest.mark.parametrize("path", [SMALL_M, LARGE_M, TILES])
@pytest.mark.parametrize("M", [1, 3, 13, 130])
@pytest.mark.parametrize("K,gs", [(4, -1), (40, 8), (264, 132), (520, 128), (200, -1), (192, 64), (448, 128),
                                  (640, -1), (256, 256)])
@pytest.mark.parametrize("N", [1, 67])
def test_kernel_matches_the_reference(sparse24_isa, monkeypatch, path, M, K, gs, N):
    use_path(monkeypatch, path)
    g = torch.Generator().manual_seed(M + K + N)
    for sdtype, sym in ((torch.float16, True), (torch.bfloat16, False), (torch.float32, False)):
        layer = Sparse24QuantLinear.from_dense(torch.randn(N, K, generator=g), bias=torch.randn(N, generator=g),
                                               group_size=gs, sym=sym, scales_dtype=sdtype)
        for xdtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(M, K, generator=g).to(xdtype)
            y = run(x, layer)
            assert y.dtype == xdtype and y.shape == (M, N)
            # bf16 activations where the CPU multiplies bf16: the kept values rounded to bf16 once, the output too
            tol = 2e-4 if xdtype == torch.float32 else (2e-2 if xdtype == torch.bfloat16 else 2e-3)
            assert error(y, x, layer) < tol, (sdtype, xdtype)


@pytest.mark.parametrize("M", [16, 48, 130, 300])  # 300: two passes of at most 256 rows
@pytest.mark.parametrize("K,gs", [(264, 132), (1088, 128)])
@pytest.mark.parametrize("N", [67, 487])  # 487: superblocks of 240 rows and a tail
def test_large_m_bf16_kernel_takes_int4(sparse24_isa, monkeypatch, M, K, gs, N):
    """bf16 activations at large M on a level with the large-M bf16 kernel: the 2:4 + int4 rows unpacked to bf16
    values a superblock at a time; the same products as the tile route to the bf16 output's rounding."""
    use_path(monkeypatch, LARGE_M)
    g = torch.Generator().manual_seed(M + K + N)
    layer = Sparse24QuantLinear.from_dense(torch.randn(N, K, generator=g), bias=torch.randn(N, generator=g),
                                           group_size=gs, sym=False)
    x = torch.randn(M, K, generator=g).bfloat16()
    y = run(x, layer)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    assert error(y, x, layer) < 4e-3
    use_path(monkeypatch, TILES)
    y_tiles = run(x, layer)
    assert ((y.float() - y_tiles.float()).abs() <= 2 ** -7 * y_tiles.float().abs() + 2e-2).all()


def test_leading_dimensions_and_module_forward(sparse24_isa):
    layer = Sparse24QuantLinear.from_dense(torch.randn(20, 128), group_size=64)
    x = torch.randn(2, 3, 128)
    y = layer(x)
    assert y.shape == (2, 3, 20)
    assert error(y.reshape(6, 20), x.reshape(6, 128), layer) < 2e-4
    assert layer(torch.randn(0, 128)).shape == (0, 20)


@pytest.mark.parametrize("path", [SMALL_M, LARGE_M, TILES])
def test_op_bad_input(sparse24_isa, monkeypatch, path):
    use_path(monkeypatch, path)
    layer = Sparse24QuantLinear.from_dense(torch.randn(9, 128), group_size=64)
    t, s, z = layer.tiles, layer.scales, layer.zeros
    op = torch.ops.slimformer.sparse24_int4_gemm
    x = torch.randn(5, 128)
    for args, msg in (((x, t.to(torch.int32), s, z, None, 128, 64), "tiles must be uint8"),
                      ((x, t[:, :-1], s, z, None, 128, 64), r"tiles must be uint8 \[ceil"),
                      ((x, t[:2], s, z, None, 128, 64), r"tiles must be uint8 \[ceil"),
                      ((x, t, s[:, :1], z, None, 128, 64), "scales must be"),
                      ((x, t, s.to(torch.int32), z, None, 128, 64), "scales must be float32"),
                      ((x, t, s, z.float(), None, 128, 64), "zeros must be uint8"),
                      ((x, t, s, z[:3], None, 128, 64), "zeros must be uint8"),
                      ((x, t, s, z, None, 128, 6), "positive multiple of 4"),
                      ((x, t, s, z, None, 126, 64), "multiple of 4"),
                      ((x[:, :60], t, s, z, None, 128, 64), "x must end in in_features=128"),
                      ((x.to(torch.int32), t, s, z, None, 128, 64), "x must be float32"),
                      ((x, t, s, z, torch.randn(8), 128, 64), "bias must be")):
        with pytest.raises(RuntimeError, match=msg):
            op(*args)
    # a position nibble that is not a pair in order (first == second, first > second), on every route
    # (tile, byte, value): row 8 groups 0/1, row 7 groups 10/11, row 2 groups 30/31
    for tile, byte, value in ((2, 128, 0x11), (1, 128 + 16 * 3 + 5, 0x4B), (0, 128 + 16 * 2 + 15, 0x5E)):
        bad = t.clone()
        bad[tile, byte] = value
        for xdtype in (torch.float32, torch.bfloat16):
            with pytest.raises(RuntimeError, match="position nibble"):
                op(x.to(xdtype), bad, s, z, None, 128, 64)


def test_opcheck_and_compile():
    layer = Sparse24QuantLinear.from_dense(torch.randn(24, 96), bias=torch.randn(24), group_size=32)
    for x in (torch.randn(3, 96), torch.randn(2, 96).bfloat16()):
        torch.library.opcheck(torch.ops.slimformer.sparse24_int4_gemm.default,
                              (x, layer.tiles, layer.scales, layer.zeros, layer.bias, 96, 32))
    x = torch.randn(4, 96)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x))


# ------------------------------------------------------------------------------ the joint pass and checkpoints
def test_joint_pass_layers_hold_exactly_the_quantized_weights():
    torch.manual_seed(0)
    X = torch.randn(256, 64)
    H = 2 / X.shape[0] * X.t() @ X
    w = torch.randn(16, 64)
    r = sparsegpt(w, H, bits=4, group_size=32)
    layer = Sparse24QuantLinear.from_quantized(r.q.t(), r.mask, r.scales.t(), r.zeros.t(), 32)
    assert torch.equal(layer.to_dense(), r.weight)  # the pass's dense result, bit for bit


def _int4_model():
    model = tiny("llama")
    slimformer.sparsify(model, Sparse24Config(quantize=GPTQConfig(bits=4, group_size=32)), inputs("llama", 2, length=16),
                        progress=False)
    return model


def test_sparsify_with_int4_gives_packed_layers_and_they_round_trip(tmp_path):
    model = _int4_model()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, Sparse24QuantLinear)}
    assert len(layers) == 6 and all(m.group_size == 32 for m in layers.values())
    slimformer.save_pretrained(model, tmp_path)
    qc = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "slimformer-sparse-24-int4"
    assert qc["sparsity_config"]["format"] == "sparse-24-bitmask"
    (group,) = qc["config_groups"].values()
    assert sorted(group["targets"]) == sorted(layers) and group["weights"]["group_size"] == 32
    from safetensors import safe_open
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        name = "model.layers.0.mlp.down_proj"
        assert f.get_tensor(f"{name}.compressed").dtype == torch.uint8
        assert f.get_tensor(f"{name}.weight_scale").shape == (128, 8)
    back = slimformer.load_pretrained(tmp_path)
    for n, m in layers.items():
        got = back.get_submodule(n)
        assert isinstance(got, Sparse24QuantLinear)
        for leaf in ("qvalues", "bitmask", "scales", "zeros"):
            assert torch.equal(getattr(got, leaf), getattr(m, leaf))
    batch = inputs("llama", 1, length=16)[0]
    assert torch.equal(output(back, batch), output(model, batch))


def test_corrupt_int4_checkpoints_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    slimformer.save_pretrained(_int4_model(), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj"
    for leaf, bad, msg in (("weight_zero_point", torch.full_like(tensors[f"{name}.weight_zero_point"], 16), "0..15"),
                           ("weight_scale", tensors[f"{name}.weight_scale"][:, :2].contiguous(), "scales must be"),
                           ("weight_scale", torch.full_like(tensors[f"{name}.weight_scale"], float("nan")), "NaN"),
                           ("compressed", tensors[f"{name}.compressed"].float(), "qvalues of a 2:4 \\+ int4"),
                           ("weight_zero_point", None, "weight_zero_point is missing")):
        broken = dict(tensors)
        if bad is None:
            del broken[f"{name}.{leaf}"]
        else:
            broken[f"{name}.{leaf}"] = bad
        save_file(broken, str(tmp_path / "model.safetensors"))
        with pytest.raises(CheckpointError, match=msg):
            slimformer.load_pretrained(tmp_path)


def test_compressed_tensors_refuses_our_int4_format_by_name(tmp_path):
    pytest.importorskip("compressed_tensors", reason="compressed-tensors 0.14.0.1 is installed by `make` (--no-deps)")
    from compressed_tensors import ModelCompressor
    slimformer.save_pretrained(_int4_model(), tmp_path)
    with pytest.raises(Exception, match="slimformer-sparse-24-int4"):
        ModelCompressor.from_pretrained(str(tmp_path))
