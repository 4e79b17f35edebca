"""Where the Megatron ranks of a parity run compute: CUDA GPUs or the CPU. Every difference between the two
is in this file or in harness.start_rank (what each rank process does before its process group); the model, its
weights, the forward and the comparison are the same code.

- cuda: one process per GPU (rank r on cuda:r, one node), NCCL, parameters made on the GPU and the model
  moved there as Megatron-LM moves it, megatron-core's own causal mask. With transformer-engine: its spec,
  megatron-core's fused kernels, and the token dispatcher and grouped expert GEMM that training uses. Without it:
  the local spec, unfused, with the CPU harness's dispatcher and per-expert GEMMs, and one shim: megatron-core
  0.16.1's `moe_utils` names `te_general_gemm` in its first MoE forward (harness.no_te_gemm).
- cpu: one process per rank over gloo, with the shims and settings of harness.py (CPU_CONFIG); always the
  local spec.
"""

from __future__ import annotations

from ..dtypes import torch_dtype
from ..errors import Hy3Error
from .harness import causal_mask, CPU_CONFIG
from .model import have_transformer_engine

DEVICES = ("cuda", "cpu")
DTYPES = ("fp32", "bf16")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, world: int, layout: str = "") -> None:
    """One clear line when this machine cannot run `world` ranks on `device`."""
    if device not in DEVICES:
        raise Hy3Error(f"--device {device}: expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise Hy3Error(f"--device cuda: torch {torch.__version__} sees no CUDA GPU; use --device cpu")
    if count < world:
        raise Hy3Error(f"--device cuda: layout {layout or world} needs {world} GPUs (one per rank), {count} visible")


def uses_te(device: str) -> bool:
    """The transformer-engine spec on a GPU where transformer_engine imports; the local spec otherwise."""
    if device != "cuda":
        return False

    return have_transformer_engine()


def spec_name(use_te: bool) -> str:
    return "transformer_engine" if use_te else "local"


def model_settings(device: str, dtype: str, use_te: bool) -> dict:
    """TransformerConfig fields for this device and dtype (the model's own come from megatron/config.py and
    the layout's from harness.parallel_config)."""
    dt = torch_dtype(dtype)
    precision = dict(params_dtype=dt, pipeline_dtype=dt, bf16=dtype == "bf16", fp16=False)
    if device == "cpu":
        return {**CPU_CONFIG, **precision, "batch_p2p_comm": False}
    if not use_te:
        # A GPU without transformer-engine (or apex): megatron-core's fused kernels come from those packages (the
        # masked softmax, for one, imports an extension they build as soon as a bf16 shape suits it), so the
        # local spec runs unfused, with the dispatcher and per-expert GEMMs of the CPU harness; parameters are made
        # on the GPU.
        return {**CPU_CONFIG, **precision, "use_cpu_initialization": False}
    # With transformer-engine: megatron-core's defaults (fused kernels, parameters made on the GPU) and the experts
    # as training runs them (megatron/config.py swift_moe_settings): the alltoall dispatcher and TE's grouped GEMM.
    return {**precision, "moe_token_dispatcher_type": "alltoall", "moe_grouped_gemm": True}


def place_model(device: str, model):
    """The built model on this rank's GPU, as Megatron-LM's `get_model` moves it (`model.cuda(current_device)`):
    megatron-core makes its own layers' parameters on the GPU, but the local spec's torch norms (RMSNorm) are made
    on the CPU. A CPU model stays where it is."""
    if device == "cuda":
        import torch

        model.cuda(torch.cuda.current_device())
    return model


def seed_model_parallel(device: str, seed: int = 1234) -> None:
    """megatron-core's CUDA RNG tracker: parameters made on the GPU, and attention, fork it by name."""
    if device == "cuda":
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def model_inputs(device: str, tokens) -> tuple:
    """(tokens, positions, attention mask) on the device. On a GPU the mask is None: megatron-core then makes
    its own causal mask (on "cuda"), as transformer-engine's causal attention needs none; on a CPU it is
    passed explicitly, the same mask."""
    import torch

    b, s = tokens.shape
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    positions = torch.arange(s, device=dev)[None].expand(b, -1)
    return tokens.to(dev), positions, (causal_mask(s) if device == "cpu" else None)
