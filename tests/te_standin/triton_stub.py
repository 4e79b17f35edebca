"""Import-time stub for `triton` (tests only), installed in sys.modules by tests/swift_harness.py
only while `mcore_bridge.model` is imported, then removed (torch probes for triton and would
otherwise take this stub for the real thing).

mcore-bridge's `model/modules/kernels/qsa_block_sparse_attn.py` imports triton unconditionally and
decorates its kernels with `@triton.jit` when `mcore_bridge.model` is imported; those kernels serve
only Qwen4-exp sparse attention and are never launched for Hy3. `jit` and `autotune` therefore
return kernels that raise if launched or called. No other part of triton is provided.
"""

import types


class constexpr:
    """`triton.language.constexpr`, evaluated in kernel signatures at import."""

    def __init__(self, value=None):
        self.value = value


language = types.ModuleType("triton.language")
language.constexpr = constexpr


class _Kernel:
    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getitem__(self, grid):
        raise RuntimeError(f"triton kernel {self.__name__}: triton is a test stub here; no kernel can run")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"triton kernel {self.__name__}: triton is a test stub here; no kernel can run")


def jit(fn=None, **kwargs):
    if fn is None:
        return _Kernel
    return _Kernel(fn)


def autotune(*args, **kwargs):
    return lambda fn: fn if isinstance(fn, _Kernel) else _Kernel(fn)


heuristics = autotune


class Config:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def cdiv(a, b):
    return -(-a // b)
