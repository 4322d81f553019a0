"""Builders of random Hub-layout GPTQ layers for the tests."""
import torch

from slimformer.gptq import format as F


def random_hub_layer(K, N, bits, group_size, *, act_order=False, checkpoint_format="gptq", sym=False, bias=True,
                     generator=None):
    """Random Hub tensors: integers uniform over the grid, zero points anywhere legal for the format."""
    g = generator
    gs = F.resolve_group_size(group_size, K)
    G = -(-K // gs)
    maxq = (1 << bits) - 1
    q = torch.randint(0, maxq + 1, (K, N), generator=g, dtype=torch.int32)
    if sym:
        zeros = torch.full((G, N), (maxq + 1) // 2, dtype=torch.int32)
    elif checkpoint_format == "gptq":
        zeros = torch.randint(1, maxq + 1, (G, N), generator=g, dtype=torch.int32)  # v1 cannot hold 0
    else:
        zeros = torch.randint(0, maxq + 1, (G, N), generator=g, dtype=torch.int32)
    scales = (torch.rand(G, N, generator=g) * 0.02 + 0.001).to(torch.float16)
    if act_order:
        perm = torch.randperm(K, generator=g)
        g_idx = torch.empty(K, dtype=torch.int32)
        g_idx[perm] = (torch.arange(K) // gs).to(torch.int32)  # GPTQ act-order: group by quantization order
    else:
        g_idx = F.default_g_idx(K, gs)
    b = (torch.randn(N, generator=g) * 0.1).to(torch.float16) if bias else None
    return dict(qweight=F.pack_rows(q, bits), qzeros=F.qzeros_from_zeros(zeros, bits, checkpoint_format),
                scales=scales, g_idx=g_idx, bias=b), q, zeros


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
