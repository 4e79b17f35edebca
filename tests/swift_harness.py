"""Process-local setup for running ms-swift's and mcore-bridge's own Megatron code on a CPU (tests only).

`setup()` must run before anything imports megatron-core in a process (the test drivers call it
first). It needs tests/te_standin on sys.path (the CPU stand-in for transformer_engine, the only
stand-in); everything else that then runs is ms-swift's, mcore-bridge's and megatron-core's code.
Each shim below says which of their calls needs it; none changes a parameter or a checkpoint byte.
"""

from __future__ import annotations

import sys
from pathlib import Path

STANDIN = Path(__file__).resolve().parent / "te_standin"

# ModelConfig settings for CPU runs: no fused CUDA kernels (each is a kernel choice, not a parameter).
CPU_MODEL_KWARGS = dict(
    use_cpu_initialization=True,          # TE layers and megatron build params on "cpu"
    gradient_accumulation_fusion=False,   # needs apex's fused wgrad kernel
    bias_activation_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False,
    masked_softmax_fusion=False, persist_layer_norm=False,
    moe_permute_fusion=False, moe_router_fusion=False,
)

_done = False


def setup() -> None:
    global _done
    if _done:
        return
    _done = True
    if str(STANDIN) not in sys.path:
        sys.path.insert(0, str(STANDIN))
    import torch

    from megatron_hy.megatron.harness import apply_cpu_shims

    # megatron-core shims shared with our own CPU harness: current_device -> "cpu" (routers, RoPE),
    # Tensor.cuda identity (embedding sync), synchronize no-op (dist_checkpointing), a CPU RNG
    # tracker (fork() without CUDA), gloo all_gather_into_tensor / reduce_scatter_tensor.
    apply_cpu_shims()

    # ms-swift's save frees the cache after writing (torch.cuda.empty_cache).
    torch.cuda.empty_cache = lambda: None
    # ms-swift's save builds an RNG dict even with no_save_rng (megatron_lm_utils._get_rng_state).
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    # megatron-core's alltoall token dispatcher makes a CUDA stream at build time (MoEAlltoAllTokenDispatcher).
    torch.cuda.Stream = _InertStream
    torch.cuda.current_stream = lambda device=None: _InertStream()
    # mcore-bridge allocates flags and counters on device "cuda" (GPTBridge._set_state_dict,
    # _reduce_tensor_pp_group, _set_layer_mlp; ms-swift's _load_iteration): run them on the CPU.
    _CudaToCpu().__enter__()
    _import_mcore_bridge()


class _InertStream:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return event


def _is_cuda(device) -> bool:
    import torch

    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


def _cuda_to_cpu_mode():
    import torch
    from torch.overrides import TorchFunctionMode

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if _is_cuda(kwargs.get("device")):
                kwargs = dict(kwargs, device="cpu")
            if func in (torch.Tensor.to, torch.Tensor.cuda) and len(args) > 1 and _is_cuda(args[1]):
                args = (args[0], "cpu", *args[2:])
            return func(*args, **kwargs)

    return Mode


def _CudaToCpu():
    return _cuda_to_cpu_mode()()


def _import_mcore_bridge() -> None:
    """mcore-bridge's model package imports triton (for Qwen4-exp kernels never launched here). Where triton is
    installed (torch's CUDA build brings it: the Python 3.12 environment) it imports as it is; where it is not (the
    CPU build of torch), give it tests/te_standin/triton_stub.py for that import only. torch probes for triton
    itself, so its probes run first and see none."""
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        import mcore_bridge.model  # noqa: F401
        return
    import torch._dynamo  # noqa: F401  (its import-time triton probe)
    import torch.utils._triton as torch_triton

    torch_triton.has_triton_package()  # cached: False
    import triton_stub

    sys.modules["triton"], sys.modules["triton.language"] = triton_stub, triton_stub.language
    try:
        import mcore_bridge.model  # noqa: F401
    finally:
        sys.modules.pop("triton", None)
        sys.modules.pop("triton.language", None)
