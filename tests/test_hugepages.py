"""Packed weights on transparent huge pages (slimformer.hugepages, csrc/common/hugepage_ops.cpp)."""
import copy
import re
import sys
from pathlib import Path

import pytest
import torch

import slimformer
from slimformer import hugepages

MiB2 = 2 << 20
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_usable() -> bool:
    return sys.platform.startswith("linux") and THP_MODE.exists() and "[never]" not in THP_MODE.read_text()


def _thp_advised(t: torch.Tensor) -> bool:
    """Whether the mapping holding t's first byte may have transparent huge pages (/proc/self/smaps THPeligible: in
    "madvise" mode, only where MADV_HUGEPAGE was given). It checks the advice, not whether the kernel found free 2 MiB
    pages at the first touch (AnonHugePages), which depends on how fragmented the machine's memory is."""
    addr, inside = t.data_ptr(), False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
        elif inside and line.startswith("THPeligible:"):
            return line.split()[1] == "1"
    raise AssertionError(f"no mapping holds address {addr:#x} (or no THPeligible field)")


@pytest.mark.parametrize("shape,dtype", [((3 * 1024 + 7, 513), torch.int32), (((1 << 21) + 3,), torch.uint8),
                                         ((1100, 1024), torch.bfloat16)])
def test_copy_is_exact_aligned_and_independent(shape, dtype):
    t = (torch.randn(shape) * 100).to(dtype)
    h = hugepages.hugepage_copy(t)
    assert h.dtype == t.dtype and h.shape == t.shape and h.is_contiguous()
    assert torch.equal(h, t)
    assert h.data_ptr() != t.data_ptr() and h.data_ptr() % MiB2 == 0
    h.view(-1)[0] += 1  # a copy, not a view
    assert not torch.equal(h, t)
    c = copy.deepcopy(h)  # ordinary tensors again, same values
    assert torch.equal(c, h)


def test_noncontiguous_input_gives_contiguous_copy():
    t = torch.arange(4 << 20, dtype=torch.int32).reshape(1024, -1).t()
    h = hugepages.hugepage_copy(t)
    assert h.is_contiguous() and torch.equal(h, t)


def test_small_other_devices_and_switch_return_the_tensor(monkeypatch):
    small = torch.ones(MiB2 // 4 - 1)
    assert hugepages.hugepage_copy(small) is small
    meta = torch.empty(1 << 22, device="meta")
    assert hugepages.hugepage_copy(meta) is meta
    big = torch.ones(1 << 20)
    monkeypatch.setenv("SLIMFORMER_HUGEPAGES", "0")
    assert hugepages.hugepage_copy(big) is big


@pytest.mark.skipif(not _thp_usable(), reason="transparent huge pages are off or not Linux: the copy is plain there")
def test_module_buffers_land_on_huge_pages():
    K, N = 1024, 4096  # 2:4 + int4 tiles of 2N rows: 2048 x 1536 bytes = 3 MiB
    sq = slimformer.Sparse24QuantLinear(K, 2 * N, bias=False)
    assert sq.tiles.data_ptr() % MiB2 == 0 and _thp_advised(sq.tiles)
    # a module built from codes and reloaded from its state dict keeps its tiles there (load copies in place)
    g = torch.Generator().manual_seed(0)
    mask = slimformer.sparse24.format.nm_mask(torch.rand(2 * N, K, generator=g))
    codes = torch.randint(0, 16, (2 * N, K), generator=g, dtype=torch.int32)
    scales = torch.rand(2 * N, K // 128, generator=g).half() * 0.01
    built = slimformer.Sparse24QuantLinear.from_quantized(codes, mask, scales, torch.full((2 * N, K // 128), 8), 128)
    assert _thp_advised(built.tiles)
    sq.load_state_dict(built.state_dict())
    assert _thp_advised(sq.tiles) and torch.equal(sq.tiles, built.tiles)
    x = torch.randn(3, K)
    torch.testing.assert_close(sq(x), built(x), rtol=0, atol=0)

    sl = slimformer.Sparse24Linear(K, N, dtype=torch.bfloat16)  # values 4096 x 512 bf16: 4 MiB
    assert _thp_advised(sl.values)

    ql = slimformer.QuantLinear.from_linear(torch.nn.Linear(4096, 4096))  # qtiles 8 MiB
    assert ql.qtiles.data_ptr() % MiB2 == 0 and _thp_advised(ql.qtiles)
    # and a plain torch allocation is not advised in "madvise" mode (so the check can fail)
    if "[madvise]" in THP_MODE.read_text():
        assert not _thp_advised(torch.ones(3 << 20))
