"""What the GPU benchmarks share: one process as megatron-core's whole world, the one shim it needs on a GPU
without transformer-engine, Hy3 layers built from the bundled config and cast to the run's dtype the way
training casts them (megatron-core's Float16Module), and the GPU's name and peak rate.

The same code runs on a CPU at tiny widths (`--device cpu --tiny`), which is how CI keeps it working: there
the CPU harness's shims apply (megatron_hy.megatron.harness) and every number means nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

GPU_MEMORY_GB = {"H200": 141, "H100": 80, "H800": 80, "H20": 96}


def init_single_process(on_gpu: bool) -> None:
    """torch.distributed with one rank and megatron-core's parallel state, all sizes 1."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_hy.megatron.harness import apply_cpu_shims, free_port, no_te_gemm

    if on_gpu:
        no_te_gemm()
        torch.cuda.set_device(0)
    else:
        apply_cpu_shims()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)
    ps.initialize_model_parallel()
    if on_gpu:
        from megatron.core import tensor_parallel

        tensor_parallel.model_parallel_cuda_manual_seed(0)


def use_te(on_gpu: bool, spec: str) -> bool:
    """transformer-engine's layer spec when asked for, or (auto) on a GPU where it imports."""
    from megatron_hy.megatron.model import have_transformer_engine

    if spec == "te" and not have_transformer_engine():
        raise SystemExit("--spec te: transformer_engine does not import here")
    return spec == "te" or (spec == "auto" and on_gpu and have_transformer_engine())


def hy3_config(tiny: bool, ep: int = 1, layers: int | None = None):
    """The bundled Hy3 config (real widths) or a tiny Hy3, with the routed experts of one expert-parallel rank
    of size `ep` (each token still picks top-k of them) and `layers` decoder layers, the first dense as in
    Hy3, without MTP."""
    import megatron_hy
    from megatron_hy.config import load_config

    cfg = load_config(Path(megatron_hy.__file__).parent / "assets" / "hy3_config.json")
    if tiny:
        cfg = dataclasses.replace(cfg, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=16, num_experts=8,
                                  top_k=4, moe_ffn=32, intermediate_size=128, vocab_size=512)
    if cfg.num_experts % ep or cfg.num_experts // ep < cfg.top_k:
        raise SystemExit(f"--ep {ep}: {cfg.num_experts} experts do not split into ranks of at least top-{cfg.top_k}")
    n = layers or cfg.num_layers
    return dataclasses.replace(cfg, num_experts=cfg.num_experts // ep, num_layers=n,
                               layer_types=("dense",) + ("sparse",) * (n - 1), num_mtp_layers=0)


def transformer_config(cfg, on_gpu: bool, dtype, te: bool, **recompute):
    """TransformerConfig for the benchmarks: no fused CUDA kernels, the allgather dispatcher and one GEMM per
    expert (the CPU harness's settings, which also run on a GPU with the local spec); grouped GEMM experts
    where transformer-engine provides them; bf16 set as training sets it, so that Float16Module casts."""
    import torch

    from megatron_hy.megatron.harness import CPU_CONFIG
    from megatron_hy.megatron.model import make_transformer_config

    kw = dict(CPU_CONFIG, use_cpu_initialization=not on_gpu, params_dtype=dtype, bf16=dtype == torch.bfloat16,
              moe_grouped_gemm=te)
    return make_transformer_config(cfg, **kw, **recompute)


def sdpa_attention_class():
    """Core attention over torch's scaled_dot_product_attention (flash on a Hopper GPU), with megatron-core's
    core-attention interface: the local spec's DotProductAttention keeps the seq x seq scores, which the
    fused attention of training (and the planner's count) does not."""
    import torch
    from megatron.core.transformer.module import MegatronModule

    class SDPAttention(MegatronModule):
        def __init__(self, config, layer_number, attn_mask_type, attention_type, **kwargs):
            super().__init__(config=config)

        def forward(self, query, key, value, attention_mask=None, attn_mask_type=None, attention_bias=None,
                    packed_seq_params=None, **kwargs):
            # megatron-core hands [s, b, heads, dim]; SDPA takes [b, heads, s, dim]
            q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            s, b = query.shape[0], query.shape[1]
            return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    return SDPAttention


def layer_specs(tconfig, te: bool):
    """(the decoder block spec, the MoE layer spec) of megatron_hy's model builder; with the local spec the
    core attention is SDPA (sdpa_attention_class)."""
    from megatron_hy.megatron.model import block_specs

    block, moe = block_specs(tconfig, use_te=te)
    if te:
        return block, moe
    block, moe = copy.deepcopy(block), copy.deepcopy(moe)
    for spec in [*block.layer_specs, moe]:
        spec.submodules.self_attention.submodules.core_attention = sdpa_attention_class()
    return block, moe


def cast_like_training(module, tconfig):
    """The module in the run's dtype as megatron-core's Float16Module casts a model: every parameter and
    buffer, RMSNorm weights included (a module built with params_dtype bf16 keeps fp32 norms otherwise, and
    its norm outputs are then kept in fp32). The router's expert bias goes back to fp32 at its first forward,
    as in training. An fp32 run is left as built."""
    if not (tconfig.bf16 or tconfig.fp16):
        return module
    from megatron.core.transformer.module import Float16Module

    return Float16Module(tconfig, module).module


def param_dtypes(module) -> dict:
    """dtype -> number of parameters, and the dtypes of the norm weights (which the cast must have reached)."""
    out: dict = {}
    norms = set()
    for name, p in module.named_parameters():
        d = str(p.dtype).replace("torch.", "")
        out[d] = out.get(d, 0) + 1
        if "norm" in name:
            norms.add(d)
    return {"parameters": out, "norm_weights": sorted(norms)}


def rotary(cfg, seq: int, device):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    return RotaryEmbedding(cfg.head_dim, rotary_percent=1.0, rotary_base=cfg.rope_theta)(seq).to(device)


def peak_of(on_gpu: bool, override: float | None) -> tuple[float, str]:
    """(peak dense bf16 TFLOP/s the cost model assumes for this GPU, its name)."""
    import torch

    from megatron_hy.plan.cost import DEFAULT_COST

    if not on_gpu:
        return override or DEFAULT_COST.default_tflops, "cpu"
    name = torch.cuda.get_device_name(0)
    mem = next((gb for key, gb in GPU_MEMORY_GB.items() if key in name), 0)
    return DEFAULT_COST.tflops(mem, override), name


def versions() -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        from importlib.metadata import version

        out["megatron-core"] = version("megatron-core")
    except Exception:
        import megatron.core

        out["megatron-core"] = getattr(megatron.core, "__version__", "unknown")
    try:
        import transformer_engine

        out["transformer-engine"] = getattr(transformer_engine, "__version__", "present")
    except Exception:
        out["transformer-engine"] = None
    return out
