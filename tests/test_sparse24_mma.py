"""The CUDA tensor-core 2:4 kernel's data layout, checked on the CPU.

`slimformer::_sparse24_mma_emulate` runs the kernel's own register gathers (csrc/sparse24/sparse24_mma_layout.h:
compressed values, bitmask -> mma.sp metadata, activations, output positions, the bad-row marking) warp by warp
around an emulation of mma.sp.m16n8k32 as PTX describes it. These tests hold it to the float64 reference on tails in
every direction, so a wrong index in the kernel fails here without a GPU; test_cuda.py runs the real instruction.
"""
import pytest
import torch

from helpers import rel_err
from slimformer.sparse24 import format as S

op = torch.ops.slimformer._sparse24_mma_emulate
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}


def _layer(N, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    values, bitmask = S.compress(w.to(dtype), S.nm_mask(w.abs() + torch.rand(N, K, generator=g)))
    return values, bitmask, torch.randn(N, generator=g)


# K: one partial tile (4, 36), exact tiles (64), a tile and a few groups (100, 264); N: below, at and past the 16
# rows of a warp; M: below, at and past the 8 tokens of an instruction
@pytest.mark.parametrize("K", [4, 36, 64, 100, 264])
@pytest.mark.parametrize("N", [1, 16, 17, 45])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_tensor_core_kernel_matches_reference(K, N, dtype):
    values, bitmask, bias = _layer(N, K, dtype, seed=K * 100 + N)
    for M in (1, 7, 8, 9, 33):
        x = torch.randn(M, K).to(dtype)
        ref = S.reference_gemm(x.double(), values.double(), bitmask, bias.double(), K)
        y = op(x, values, bitmask, bias.to(dtype), K)
        assert y.dtype == dtype and y.shape == (M, N)
        assert rel_err(y, ref) < TOL[dtype], (M, rel_err(y, ref))
        ref_nb = S.reference_gemm(x.double(), values.double(), bitmask, None, K)
        assert rel_err(op(x, values, bitmask, None, K), ref_nb) < TOL[dtype]


def test_emulated_kernel_every_position_pair():
    # all six kept-position pairs in every metadata slot: each of the 8 groups of a 32-input tile, rows 0-7 (bits
    # 15:0 of the metadata) and 8-15 (bits 31:16), lanes t = 0 and t = 1
    N, K = 32, 96
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    mask = torch.zeros(N, K, dtype=torch.bool)
    for n in range(N):
        for grp in range(K // 4):
            a, b = pairs[(n * 7 + grp * 5) % 6]
            mask[n, 4 * grp + a] = mask[n, 4 * grp + b] = True
    w = torch.randn(N, K).bfloat16()
    values, bitmask = S.compress(w, mask)
    x = torch.randn(5, K).bfloat16()
    ref = x.double() @ (w.double() * mask).t()
    assert rel_err(op(x, values, bitmask, None, K), ref) < 1e-2


def test_emulated_kernel_marks_corrupt_rows():
    N, K = 33, 72
    values, bitmask, _ = _layer(N, K, torch.bfloat16)
    bad = bitmask.clone()
    bad[3, 0] = (bad[3, 0] & 0xF0) | 0x0F  # row 3 (metadata bits 15:0), group 0: keeps 4
    bad[10, 3] = (bad[10, 3] & 0x0F) | 0x10  # row 10 (bits 31:16), group 7 (lane t = 1): keeps 1
    bad[32, 8] = (bad[32, 8] & 0xF0)  # the tail warp's row 0, group 16 (second tile): keeps none
    x = torch.randn(9, K).bfloat16()
    y = op(x, values, bad, None, K)
    corrupt = [3, 10, 32]
    assert torch.isnan(y[:, corrupt]).all()
    others = [n for n in range(N) if n not in corrupt]
    ref = S.reference_gemm(x.double(), values.double(), bitmask, None, K)
    assert torch.isfinite(y[:, others]).all() and rel_err(y[:, others], ref[:, others]) < 1e-2


def test_emulated_kernel_leading_shape_and_bad_input():
    values, bitmask, bias = _layer(20, 40, torch.float16)
    x = torch.randn(2, 3, 40).half()
    y = op(x, values, bitmask, bias.half(), 40)
    assert y.shape == (2, 3, 20)
    ref = S.reference_gemm(x.reshape(6, 40).double(), values.double(), bitmask, bias.double(), 40)
    assert rel_err(y.reshape(6, 20), ref) < 2e-3
    with pytest.raises(RuntimeError, match="both bfloat16 or both float16"):
        op(x.bfloat16(), values, bitmask, None, 40)
    with pytest.raises(RuntimeError, match="both bfloat16 or both float16"):
        op(x.float(), values.float(), bitmask, None, 40)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        op(torch.randn(2, 42).half(), values, bitmask, None, 42)
