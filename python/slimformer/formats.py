"""The weight-format registry: one row per packed format, consulted by the modules and the kernel wrappers.

Like ggml's type table, adding a format is adding a row: what a packing unit is (how many values in how many
int32 words), and which kernels serve it. The GPTQ formats share the Hub bit-stream packing of
python/slimformer/gptq/format.py and the native decode header csrc/gptq/gptq_decode.h.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WeightFormat:
    name: str
    bits: int
    values_per_unit: int  # values in one packing unit
    words_per_unit: int  # int32 words in one packing unit
    kernels: tuple[str, ...]  # native kernel families that run it
    description: str

    @property
    def bytes_per_weight(self) -> float:
        return self.bits / 8


FORMATS: dict[str, WeightFormat] = {}


def register_format(fmt: WeightFormat) -> WeightFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"weight format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> WeightFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weight format {name!r}; known: {sorted(FORMATS)}") from None


def gptq_format(bits: int) -> WeightFormat:
    """The GPTQ format for `bits`, with a clear error for unsupported widths."""
    name = f"gptq_int{bits}"
    if name not in FORMATS:
        supported = sorted(f.bits for f in FORMATS.values() if f.name.startswith("gptq_"))
        raise ValueError(f"GPTQ bits must be one of {supported}, got {bits!r}")
    return FORMATS[name]


for _bits, _desc in ((4, "GPTQ int4: 8 values per int32 word"),
                     (3, "GPTQ int3: 32 values per 3 int32 words (values 10 and 21 straddle words)"),
                     (2, "GPTQ int2: 16 values per int32 word"),
                     (8, "GPTQ int8: 4 values per int32 word")):
    register_format(WeightFormat(
        name=f"gptq_int{_bits}", bits=_bits, values_per_unit=32 if _bits == 3 else 32 // _bits,
        words_per_unit=3 if _bits == 3 else 1, kernels=("gptq_gemm", "gptq_dequantize"), description=_desc))
