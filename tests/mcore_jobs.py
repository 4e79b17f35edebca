"""Rank functions the tests run in real gloo processes (importable by spawned children)."""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path


def save_with_megatron(model, out: str | Path, iteration: int = 1) -> Path:
    """megatron-core's dist_checkpointing.save of a live model, laid out as ms-swift saves one.
    Every rank calls it."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps

    from megatron_hy.convert.torch_dist import CONTENT_METADATA, TRACKER, iter_dir_name
    from megatron_hy.megatron.weights import model_sharded_state_dict

    it = Path(out) / iter_dir_name(iteration)
    if dist.get_rank() == 0:
        it.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    args = Namespace(tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
                     pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
                     expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
                     no_save_optim=True, no_save_rng=True, consumed_train_samples=0)
    state = {"model": model_sharded_state_dict(model), "args": args, "checkpoint_version": 3.0, "iteration": iteration}
    dist_checkpointing.save(state, str(it), content_metadata=CONTENT_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(out) / TRACKER).write_text(str(iteration))
    return it


def save_with_megatron_from_hf(rank: int, world: int, hf_dir: str, out: str, tp: int, pp: int, ep: int) -> bool:
    """Build the Hy3 GPTModel under a layout, fill it from HF, save it with megatron-core's dist_checkpointing."""
    import torch

    from megatron_hy.hf_checkpoint import HFCheckpoint
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
