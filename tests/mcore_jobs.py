"""Rank functions the tests run in real gloo processes (importable by spawned children)."""

from __future__ import annotations


def save_with_megatron_from_hf(rank: int, world: int, hf_dir: str, out: str, tp: int, pp: int, ep: int) -> bool:
    """Build the Hy3 GPTModel under a layout, fill it from HF, save it with megatron-core's dist_checkpointing."""
    import torch

    from megatron_hy.hf_checkpoint import HFCheckpoint
    from megatron_hy.convert.hf_to_mcore import save_with_megatron
    from megatron_hy.megatron.harness import CPU_CONFIG, init_parallel, parallel_config
    from megatron_hy.megatron.model import build_gpt_model, make_transformer_config
    from megatron_hy.megatron.weights import load_into_model

    init_parallel(tp, pp, ep)
    hf = HFCheckpoint(hf_dir)
    tconfig = make_transformer_config(hf.config, **CPU_CONFIG, params_dtype=torch.float32,
                                      pipeline_dtype=torch.float32, **parallel_config(tp, pp, ep))
    model = build_gpt_model(hf.config, tconfig, use_te=False)
    load_into_model(model, hf.config, hf.read)
    save_with_megatron(model, out)
    return True
