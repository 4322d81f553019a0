"""CUDA kernels against the float64 reference (skipped without a GPU; `make cuda-check` compiles them anyway)."""
import pytest
import torch

from conftest import requires_cuda
from helpers import random_hub_layer, rel_err
from slimformer import QuantLinear
from slimformer.gptq import format as F

pytestmark = [pytest.mark.cuda, requires_cuda]


@pytest.mark.parametrize("bits,K,N,gs", [(4, 200, 72, 32), (4, 4096, 4096, 128), (3, 160, 96, -1),
                                         (3, 1024, 512, 128), (2, 96, 48, 32), (8, 72, 24, -1)])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_matches_reference(bits, K, N, gs, act_order, dtype):
    hub, _, _ = random_hub_layer(K, N, bits, gs, act_order=act_order, checkpoint_format="gptq_v2")
    layer = QuantLinear.from_gptq(**hub, bits=bits, group_size=gs, checkpoint_format="gptq_v2").to("cuda")
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-5}[dtype]
    for M in (1, 5, 32, 33, 300):
        x = torch.randn(M, K).to(dtype)
        ref = F.reference_gemm(x.double(), **hub, bits=bits, group_size=F.resolve_group_size(gs, K),
                               in_features=K, out_features=N, checkpoint_format="gptq_v2")
        y = layer(x.cuda())
        assert y.dtype == dtype and y.device.type == "cuda"
        assert rel_err(y.cpu(), ref) < tol, (M, rel_err(y.cpu(), ref))


def test_cuda_dequantize_and_state_dict():
    hub, _, _ = random_hub_layer(256, 64, 3, 64, act_order=True)
    gpu = QuantLinear.from_gptq(**hub, bits=3, group_size=64).cuda()
    W = F.reference_dequantize(*(hub[k] for k in ("qweight", "qzeros", "scales", "g_idx")), bits=3, group_size=64,
                               in_features=256, out_features=64)
    assert torch.equal(gpu.dequantize().cpu().double(), W.t())  # every value is exact in fp32
    assert torch.equal(gpu.state_dict()["qweight"].cpu(), hub["qweight"])


def test_cuda_rejects_cpu_activations():
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 32), bits=4, group_size=32).cuda()
    with pytest.raises(RuntimeError):
        layer(torch.randn(2, 64))


@pytest.mark.parametrize("K,N", [(36, 67), (264, 33), (4096, 256)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_sparse24_matches_reference(K, N, dtype):
    from slimformer.sparse24 import format as S
    w = torch.randn(N, K)
    values, bitmask = S.compress(w.to(dtype), S.nm_mask(w.abs()))
    bias = torch.randn(N)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-5}[dtype]
    for M in (1, 7, 32, 33, 130):
        x = torch.randn(M, K).to(dtype)
        ref = S.reference_gemm(x.double(), values.double(), bitmask, bias.double(), K)
        y = torch.ops.slimformer.sparse24_gemm(x.cuda(), values.cuda(), bitmask.cuda(), bias.to(dtype).cuda(), K)
        assert y.dtype == dtype and y.device.type == "cuda"
        assert rel_err(y.cpu(), ref) < tol, (M, rel_err(y.cpu(), ref))
    bad = bitmask.clone()
    bad[3, 0] = 0x0F  # a group keeping 4: that row's outputs are NaN on CUDA, the others exact
    y = torch.ops.slimformer.sparse24_gemm(torch.randn(2, K, dtype=dtype).cuda(), values.cuda(), bad.cuda(), None, K)
    assert torch.isnan(y[:, 3]).all() and torch.isfinite(y[:, :3]).all()


@pytest.mark.parametrize("K,N", [(4, 1), (36, 17), (100, 45), (4096, 256)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_sparse24_tensor_cores_match_emulation(K, N, dtype):
    # bf16/fp16 at M <= 32 take mma.sp: the same outputs as the CPU emulation of that kernel (test_sparse24_mma.py)
    # up to the order of the fp32 sums, and an input starting off a 4-byte boundary is copied, not misread
    from slimformer.sparse24 import format as S
    w = torch.randn(N, K)
    values, bitmask = S.compress(w.to(dtype), S.nm_mask(w.abs()))
    for M in (1, 8, 9, 32):
        x = torch.randn(M, K).to(dtype)
        emu = torch.ops.slimformer._sparse24_mma_emulate(x, values, bitmask, None, K)
        y = torch.ops.slimformer.sparse24_gemm(x.cuda(), values.cuda(), bitmask.cuda(), None, K).cpu()
        assert rel_err(y, emu) < 4e-3, (M, rel_err(y, emu))
    flat = torch.cat([torch.zeros(1, dtype=dtype), x.reshape(-1)]).cuda()
    x_odd = flat[1:].view(M, K)  # data_ptr 2 bytes past an allocation
    y = torch.ops.slimformer.sparse24_gemm(x_odd, values.cuda(), bitmask.cuda(), None, K).cpu()
    assert rel_err(y, emu) < 4e-3


@pytest.mark.parametrize("K,N,gs", [(40, 67, 8), (264, 33, -1), (4096, 256, 128)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_sparse24_int4_matches_reference(K, N, gs, dtype):
    from slimformer import Sparse24QuantLinear
    from slimformer.sparse24 import format as S
    layer = Sparse24QuantLinear.from_dense(torch.randn(N, K), bias=torch.randn(N), group_size=gs, sym=N % 2 == 0)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 2e-5}[dtype]
    on = [t.cuda() for t in (layer.tiles, layer.scales, layer.zeros)]
    for M in (1, 7, 32, 33, 130):
        x = torch.randn(M, K).to(dtype)
        ref = S.reference_int4_gemm(x.double(), layer.qvalues, layer.bitmask, layer.scales, layer.zeros,
                                    layer.bias.double(), K, gs)
        y = torch.ops.slimformer.sparse24_int4_gemm(x.cuda(), *on, layer.bias.to(dtype).cuda(), K, gs)
        assert y.dtype == dtype and y.device.type == "cuda"
        assert rel_err(y.cpu(), ref) < tol, (M, rel_err(y.cpu(), ref))
    assert rel_err(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x)) < tol


def test_cuda_sparse24_module():
    from slimformer import Sparse24Linear
    layer = Sparse24Linear.from_linear(torch.nn.Linear(96, 40), dtype=torch.bfloat16)
    x = torch.randn(3, 96).bfloat16()
    assert rel_err(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x)) < 1e-2


@pytest.mark.parametrize("N,H,D", [(1, 1, 8), (7, 3, 40), (197, 6, 64), (513, 2, 24)])
@pytest.mark.parametrize("masked", [False, True])
def test_cuda_token_attention_matches_reference(N, H, D, masked):
    from slimformer.tokens.attention import attention, attention_reference
    B = 2
    q, k, v = (torch.randn(B, N, H, D) for _ in range(3))
    bias = torch.zeros(B, N)
    if masked and N > 2:
        bias[1, N // 2:] = float("-inf")
    keep = torch.stack([torch.arange(0, N, 2)] * B)
    w = torch.rand(B, H)
    for kp in (None, keep):
        got = attention(q.cuda(), k.cuda(), v.cuda(), bias.cuda(), None if kp is None else kp.cuda(), w.cuda(),
                        True, True)
        want = attention_reference(q.double(), k.double(), v.double(), bias.double(), kp, w.double(), True, True)
        assert rel_err(got[0].cpu(), want[0]) < 1e-5
        assert (got[1].cpu().double() - want[1]).abs().max() < 1e-5 * want[1].abs().max().clamp_min(1)
        assert (got[2].cpu().double() - want[2]).abs().max() < 1e-6
