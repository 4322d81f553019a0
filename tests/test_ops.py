"""Op registration: schemas, fake implementations (torch.library.opcheck) and torch.compile without graph breaks."""
import pytest
import torch

from helpers import random_hub_layer
from slimformer import QuantLinear


def _layer(act_order, bias=True, bits=4):
    hub, _, _ = random_hub_layer(128, 64, bits, 32, act_order=act_order, bias=bias)
    return QuantLinear.from_gptq(**hub, bits=bits, group_size=32)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("M", [1, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_gptq_gemm(act_order, M, dtype):
    layer = _layer(act_order)
    x = torch.randn(M, 128).to(dtype)
    torch.library.opcheck(torch.ops.slimformer.gptq_gemm.default,
                          (x, layer.qtiles, layer.scale_zero, layer.perm, layer.bias, 4, 32, 128, 64))


@pytest.mark.parametrize("bits", [3, 4])
def test_opcheck_dequantize_and_unpack(bits):
    layer = _layer(False, bits=bits)
    torch.library.opcheck(torch.ops.slimformer.gptq_dequantize.default,
                          (layer.qtiles, layer.scale_zero, bits, 32, 128, 64))
    words = torch.randint(-2**31, 2**31 - 1, (12, 5), dtype=torch.int32)
    torch.library.opcheck(torch.ops.slimformer._unpack_bits.default, (words, bits, 12 * 32 // bits))


def test_torch_compile_fullgraph():
    int3 = QuantLinear.from_gptq(**random_hub_layer(64, 32, 3, 32)[0], bits=3, group_size=32)
    model = torch.nn.Sequential(_layer(True), torch.nn.GELU(), int3)
    x = torch.randn(3, 128)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(x), eager)
