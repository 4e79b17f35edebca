"""Every dtype hy3 names, in one table, with its three spellings: a safetensors header's (`BF16`), torch's and
config.json's `torch_dtype` (`bfloat16`), and the short one of flags and recipes (`bf16`)."""

from __future__ import annotations

from typing import NamedTuple


class DType(NamedTuple):
    safetensors: str
    torch: str             # the attribute of the torch module
    itemsize: int
    floating: bool
    short: str | None      # --dtype, recipes' *_dtype settings
    # Floats: the bits all set in NaN and Inf (the exponent), found by them in the raw bytes. F8_E4M3 (fn) has no
    # Inf; its NaN is S.1111.111.
    nonfinite: int | None = None


TABLE = (
    DType("F64", "float64", 8, True, None, 0x7FF0000000000000),
    DType("F32", "float32", 4, True, "fp32", 0x7F800000),
    DType("F16", "float16", 2, True, "fp16", 0x7C00),
    DType("BF16", "bfloat16", 2, True, "bf16", 0x7F80),
    DType("F8_E4M3", "float8_e4m3fn", 1, True, "fp8", 0x7F),
    DType("F8_E5M2", "float8_e5m2", 1, True, None, 0x7C),
    DType("I64", "int64", 8, False, None),
    DType("I32", "int32", 4, False, None),
    DType("I16", "int16", 2, False, None),
    DType("I8", "int8", 1, False, None),
    DType("U64", "uint64", 8, False, None),
    DType("U32", "uint32", 4, False, None),
    DType("U16", "uint16", 2, False, None),
    DType("U8", "uint8", 1, False, None),
    DType("BOOL", "bool", 1, False, None),
)

# What a conversion may write (--dtype) and config.json may name, in this order in messages.
CAST = ("bf16", "fp16", "fp32")

# Each spelling -> its row; the three spellings never collide.
NAMES = {name: d for d in TABLE for name in (d.safetensors, d.torch, d.short) if name}
ITEMSIZE = {d.safetensors: d.itemsize for d in TABLE}
FLOAT_DTYPES = {d.safetensors for d in TABLE if d.floating}
SHORT_BYTES = {d.short: d.itemsize for d in TABLE if d.short}


def torch_dtype(name: str):
    """The torch dtype of a name in any of its spellings (BF16, bfloat16, bf16)."""
    import torch

    return getattr(torch, NAMES[name].torch)


def torch_name(name: str) -> str:
    """bf16 or BF16 -> bfloat16, as config.json's torch_dtype says it."""
    return NAMES[name].torch


def safetensors_name(name: str) -> str:
    """bf16 or bfloat16 -> BF16, as a safetensors header says it."""
    return NAMES[name].safetensors


def dtype_name(dtype) -> str:
    """A torch dtype's safetensors name."""
    import torch

    return {getattr(torch, d.torch): d.safetensors for d in TABLE}[dtype]
