import os

import pytest
import torch

from slimformer import ops


def _supported_isas():
    feats = ops.cpu_features()  # e.g. "isa=avx2 avx2=1 avx512=0 ..."
    best = feats.split()[0].split("=")[1]
    order = ["scalar", "avx2", "avx512", "avx512vnni", "avx512bf16", "amx"]
    return order[: order.index(best) + 1]


SUPPORTED_ISAS = _supported_isas()
# GPTQ's levels (avx512bf16 adds the bf16 kernel that bf16 activations take for 2- and 4-bit weights; amx is
# avx512bf16 with an fp32 kernel that converts instead of computing on denormals)
ALL_ISAS = ["scalar", "avx2", "avx512", "avx512vnni", "avx512bf16", "amx"]
# The 2:4 sparse kernels' levels (avx512vnni runs the avx512 ones; amx is avx512bf16 with the large-M route on AMX
# tiles)
SPARSE24_ISAS = ["scalar", "avx2", "avx512", "avx512bf16", "amx"]
# The token-attention kernel's levels (the AVX-512 extensions run the avx512 one)
TOKENS_ISAS = ["scalar", "avx2", "avx512"]


def _force_isa(isa, monkeypatch):
    if isa not in SUPPORTED_ISAS:
        pytest.skip(f"this CPU cannot run the {isa} path (supports {SUPPORTED_ISAS})")
    monkeypatch.setenv("SLIMFORMER_CPU_ISA", isa)
    assert ops.cpu_isa() == isa
    return isa


@pytest.fixture(params=ALL_ISAS)
def cpu_isa(request, monkeypatch):
    """Runs the test once per CPU kernel path; paths this CPU cannot execute are skipped (running them would be an
    illegal instruction), which is why CI on an AVX2-only machine reports the avx512 cases as skipped."""
    return _force_isa(request.param, monkeypatch)


@pytest.fixture(params=TOKENS_ISAS)
def tokens_isa(request, monkeypatch):
    """cpu_isa for the token-pruned attention kernel: one run per level with its own kernel."""
    return _force_isa(request.param, monkeypatch)


@pytest.fixture(params=SPARSE24_ISAS)
def sparse24_isa(request, monkeypatch):
    """cpu_isa for the 2:4 sparse kernels: one run per level that has its own sparse kernels."""
    return _force_isa(request.param, monkeypatch)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
