"""Packed weights on transparent huge pages (2 MiB) on the CPU: hugepage_copy and the module mixin that applies it."""
from __future__ import annotations

import os

import torch


HUGEPAGE_MIN_BYTES = 2 << 20


def hugepage_copy(t: torch.Tensor) -> torch.Tensor:
    """t itself, or, for a CPU tensor of at least 2 MiB, a contiguous copy on 2 MiB-aligned memory advised as
    transparent huge pages (Linux): what the modules keep their packed weights in, so that the small-M kernels stream
    them without a TLB miss and a prefetcher stop every 4 KiB (csrc/common/hugepage_ops.cpp has the measured gain).
    SLIMFORMER_HUGEPAGES=0 turns it off (every tensor is returned as it is)."""
    from . import ops  # late: ops imports the method packages, whose modules use this one

    if (not ops.HAS_NATIVE or t.device.type != "cpu" or t.nbytes < HUGEPAGE_MIN_BYTES
            or os.environ.get("SLIMFORMER_HUGEPAGES", "1") == "0"):
        return t
    return torch.ops.slimformer.cpu_hugepage_copy(t)


class HugePageBuffers:
    """nn.Module mixin: the buffers named in `_hugepage_buffers` are moved onto huge pages (hugepage_copy) whenever
    they are assigned, and by `_hugepage_init()` at the end of __init__ (load_state_dict copies into the buffers in
    place, so they stay there). Device moves and dtype casts (Module._apply) give ordinary tensors again."""

    _hugepage_buffers: tuple[str, ...] = ()

    def __setattr__(self, name, value):
        if name in self._hugepage_buffers and isinstance(value, torch.Tensor):
            value = hugepage_copy(value)
        super().__setattr__(name, value)

    def _hugepage_init(self):
        for name in self._hugepage_buffers:
            t = self._buffers.get(name)
            if t is not None:
                self._buffers[name] = hugepage_copy(t)
