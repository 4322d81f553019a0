"""The 2:4 sparse CPU kernels (slimformer::sparse24_gemm) against the float64 reference (format.reference_gemm), on
every ISA path the machine has, on awkward shapes, through the sparse small-M kernel, the large-M bf16 kernel (where
the level has it) and the decompressed-tile path, and their bad-input errors."""
import pytest
import torch

import slimformer
from slimformer import Sparse24Linear
from slimformer.sparse24 import format as F

SMALL_M, LARGE_M = "1000000", "1"  # SLIMFORMER_SPARSE24_LARGE_M forcing one path or the other
TILES = "tiles"  # LARGE_M with the large-M bf16 kernel switched off (SLIMFORMER_SPARSE24_WIDE=0)


def use_path(monkeypatch, path):
    monkeypatch.setenv("SLIMFORMER_SPARSE24_LARGE_M", SMALL_M if path == SMALL_M else LARGE_M)
    monkeypatch.setenv("SLIMFORMER_SPARSE24_WIDE", "0" if path == TILES else "1")


def make(N, K, vdtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    mask = F.nm_mask(w.abs())
    values, bitmask = F.compress(w.to(vdtype), mask)
    return values, bitmask


def error(y, x, values, bitmask, bias, K):
    """Relative error of y against the float64 product of exactly the inputs the kernel saw."""
    ref = F.reference_gemm(x.double(), values.double(), bitmask, None if bias is None else bias.double(), K)
    return ((y.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("path", [SMALL_M, LARGE_M, TILES])
@pytest.mark.parametrize("M", [1, 3, 8, 13, 130])
@pytest.mark.parametrize("K", [4, 36, 264, 360])  # 360: whole chunks past the one-row kernel's groups of 4, and a tail
@pytest.mark.parametrize("N", [1, 67])
def test_kernel_matches_the_reference(sparse24_isa, monkeypatch, path, M, K, N):
    use_path(monkeypatch, path)
    for vdtype in (torch.float32, torch.bfloat16):
        values, bitmask = make(N, K, vdtype, seed=M + K + N)
        bias = torch.randn(N)
        for xdtype in (torch.float32, torch.bfloat16, torch.float16):
            x = torch.randn(M, K).to(xdtype)
            y = torch.ops.slimformer.sparse24_gemm(x, values, bitmask, bias, K)
            assert y.dtype == xdtype and y.shape == (M, N)
            # fp32 activations: fp32 sums; bf16/fp16: the output's own rounding (and, on the tile path, the
            # dense bf16 GEMM's)
            tol = 2e-4 if xdtype == torch.float32 else (2e-2 if xdtype == torch.bfloat16 else 2e-3)
            assert error(y, x, values, bitmask, bias, K) < tol, (vdtype, xdtype)


@pytest.mark.parametrize("M", [16, 17, 40, 64, 65, 130, 300])  # 300: two passes of at most 256 rows
@pytest.mark.parametrize("K", [36, 264, 1028])
@pytest.mark.parametrize("N", [67, 241, 487])
def test_large_m_bf16_kernel_matches_the_reference(sparse24_isa, monkeypatch, M, K, N):
    """The large-M bf16 kernel (sparse24_cpu_wide.h; sparse24_cpu_amx.h at amx) wherever the level has it, else the
    tiles: row blocks of 16 and tiles of 4 of them with tails, passes of at most 256 rows, K blocks of 64 inputs (32
    on AMX) with a tail, superblocks of 240 output rows (passes of 32 on AMX) with tails. Its sums are fp32 sums of
    bf16 products, so only the bf16 output's rounding is left."""
    check_large_m_bf16(monkeypatch, M, K, N, seed=M + K + N)


def check_large_m_bf16(monkeypatch, M, K, N, seed):
    """The large-M bf16 route against the reference, and against the small-M kernel to the output's rounding (the
    same products; sums in another order)."""
    use_path(monkeypatch, LARGE_M)
    values, bitmask = make(N, K, torch.bfloat16, seed=seed)
    x = torch.randn(M, K).bfloat16()
    y = torch.ops.slimformer.sparse24_gemm(x, values, bitmask, None, K)
    assert y.dtype == torch.bfloat16 and y.shape == (M, N)
    assert error(y, x, values, bitmask, None, K) < 4e-3
    use_path(monkeypatch, SMALL_M)
    y_small = torch.ops.slimformer.sparse24_gemm(x, values, bitmask, None, K)
    assert ((y.float() - y_small.float()).abs() <= 2 ** -7 * y_small.float().abs() + 1e-3).all()


@pytest.mark.parametrize("M,K", [(130, 3624), (300, 3624), (48, 11008)])
def test_large_m_bf16_kernel_long_inputs(sparse24_isa, monkeypatch, M, K):
    """Long rows: on AMX the packed activations of all of K pass 1 MiB, so K is taken in chunks with the sums held
    between them (130 rows: chunks of 113 blocks of 32 inputs, the tail block alone in the last; 300 rows: a pass of
    256 rows in chunks of 64 blocks and one of 44 rows in one chunk; 48 rows x 11008 inputs: chunks of 341 and 3
    blocks)."""
    check_large_m_bf16(monkeypatch, M, K, 67, seed=M + K)


def test_routes_env_is_checked(monkeypatch):
    values, bitmask = make(8, 32, torch.bfloat16)
    monkeypatch.setenv("SLIMFORMER_SPARSE24_LARGE_M", LARGE_M)
    monkeypatch.setenv("SLIMFORMER_SPARSE24_WIDE", "yes")
    with pytest.raises(RuntimeError, match="SLIMFORMER_SPARSE24_WIDE must be 0 or 1"):
        torch.ops.slimformer.sparse24_gemm(torch.randn(40, 32).bfloat16(), values, bitmask, None, 32)


def test_leading_dimensions_empty_inputs_and_no_bias(sparse24_isa):
    values, bitmask = make(20, 72, torch.bfloat16)
    x = torch.randn(2, 3, 72)
    y = torch.ops.slimformer.sparse24_gemm(x, values, bitmask, None, 72)
    assert y.shape == (2, 3, 20)
    assert error(y.reshape(6, 20), x.reshape(6, 72), values, bitmask, None, 72) < 2e-4
    assert torch.ops.slimformer.sparse24_gemm(torch.randn(0, 72), values, bitmask, None, 72).shape == (0, 20)


def test_kept_zeros_and_pruned_inputs(sparse24_isa):
    # a kept weight may be 0.0, and an inf activation under a pruned weight never reaches the sum
    values, bitmask = make(8, 64, torch.float32)
    values[:, ::3] = 0.0
    x = torch.randn(1, 64)
    mask = F.unpack_bitmask(bitmask, 64)
    pruned_everywhere = (~mask).all(0).nonzero().flatten()
    if len(pruned_everywhere):
        x[0, pruned_everywhere[0]] = float("inf")
    y = torch.ops.slimformer.sparse24_gemm(x, values, bitmask, None, 64)
    x_finite = torch.where(torch.isinf(x), torch.zeros_like(x), x)
    assert error(y, x_finite, values, bitmask, None, 64) < 2e-4


@pytest.mark.parametrize("M", [1, 5])  # one activation row runs one output row at a time (sparse24_cpu_kernel.h)
@pytest.mark.parametrize("path", [SMALL_M, LARGE_M, TILES])
# 520 inputs: the one-row kernel's four accumulators (odd and even chunks checked apart), then a tail
@pytest.mark.parametrize("K,spots", [(100, ((0, 0), (8, 12), (4, 6))), (520, ((0, 8), (8, 30), (4, 50), (2, 64)))])
def test_masks_that_are_not_2_4_are_reported(sparse24_isa, monkeypatch, path, M, K, spots):
    use_path(monkeypatch, path)
    values, bitmask = make(9, K, torch.bfloat16)
    for xdtype in (torch.bfloat16, torch.float32):
        x = torch.randn(M, K).to(xdtype)
        # inputs kept in the byte's two groups: 4 and 0 / 0 and 1 / 3 and 3 / 4 and 1
        for (row, byte), value in zip(spots, (0x0F, 0x10, 0x77, 0x1F)):
            bad = bitmask.clone()
            bad[row, byte] = value
            with pytest.raises(RuntimeError, match="bitmask is not 2:4"):
                torch.ops.slimformer.sparse24_gemm(x, values, bad, None, K)


def test_bad_input_is_a_clear_error():
    values, bitmask = make(8, 32, torch.float32)
    x = torch.randn(2, 32)
    g = torch.ops.slimformer.sparse24_gemm
    with pytest.raises(RuntimeError, match="positive multiple of 4"):
        g(torch.randn(2, 30), values, bitmask, None, 30)
    with pytest.raises(RuntimeError, match="x must end in in_features=32"):
        g(torch.randn(2, 36), values, bitmask, None, 32)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        g(x.to(torch.int32), values, bitmask, None, 32)
    with pytest.raises(RuntimeError, match="values must be float32 or bfloat16"):
        g(x, values.double(), bitmask, None, 32)
    with pytest.raises(RuntimeError, match=r"values must be \[out_features, in_features / 2\]"):
        g(x, values[:, :15], bitmask, None, 32)
    with pytest.raises(RuntimeError, match="bitmask must be uint8"):
        g(x, values, bitmask.to(torch.int8), None, 32)
    with pytest.raises(RuntimeError, match=r"bitmask must be \[out_features, ceil\(in_features / 8\)\]"):
        g(x, values, bitmask[:, :3], None, 32)
    with pytest.raises(RuntimeError, match=r"bias must be a floating-point \[out_features\]"):
        g(x, values, bitmask, torch.randn(7), 32)
    with pytest.raises(RuntimeError, match="same device|one device|on the CPU"):
        g(x.to("meta"), values, bitmask, None, 32)


def test_opcheck_and_compile():
    values, bitmask = make(24, 96, torch.bfloat16)
    for x in (torch.randn(3, 96), torch.randn(2, 96).bfloat16()):
        torch.library.opcheck(torch.ops.slimformer.sparse24_gemm.default, (x, values, bitmask, None, 96))
    layer = Sparse24Linear.from_linear(torch.nn.Linear(96, 24), dtype=torch.bfloat16)
    x = torch.randn(4, 96).bfloat16()
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), layer(x))


def test_module_forward_takes_the_kernel_and_fp16_values_work(sparse24_isa):
    lin = torch.nn.Linear(72, 40)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        layer = Sparse24Linear.from_linear(lin, dtype=dtype)
        x = torch.randn(3, 72)
        want = torch.nn.functional.linear(x.double(), layer.to_dense().double(), layer.bias.double())
        assert ((layer(x).double() - want).norm() / want.norm()).item() < 2e-4
    layer48 = Sparse24Linear.from_linear(lin, n=4, m=8)  # no kernel for 4:8: the dense product
    x = torch.randn(2, 72)
    assert torch.allclose(layer48(x), torch.nn.functional.linear(x, layer48.to_dense(), layer48.bias))
