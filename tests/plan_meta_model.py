"""Parameters that megatron-core's own Hy3 GPTModel puts on given global ranks of a layout.

    python tests/plan_meta_model.py LAYOUTS.json OUT.json

LAYOUTS.json is a list of {"name", "world", "args" (a recipe's `megatron sft` arguments), "ranks"}. For
each rank, this process joins a fake process group of `world` ranks as that rank (torch's test-only
"fake" backend: every collective is a no-op), lets megatron-core's `initialize_model_parallel` work out
which TP/PP/EP/ETP ranks it is, builds the real GPTModel for it on the meta device (every virtual
pipeline chunk when VPP > 1) and counts its parameters and expert-bias buffers. No GPU, no memory:
meta tensors have shapes only. The recipe arguments are translated to megatron-core's names here,
independently of the planner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings


def count_rank(cfg, args: dict, world: int, rank: int) -> dict:
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from megatron_hy.megatron.harness import CPU_CONFIG
    from megatron_hy.megatron.model import build_gpt_model, make_transformer_config

    tp = args.get("tensor_model_parallel_size", 1)
    pp = args.get("pipeline_model_parallel_size", 1)
    ep, etp = args.get("expert_model_parallel_size", 1), args.get("expert_tensor_parallel_size", 1)
    cp = args.get("context_parallel_size", 1)
    layout = args.get("pipeline_model_parallel_layout")
    vpp = args.get("virtual_pipeline_model_parallel_size")
    if layout:
        vpp = len(layout.split("|")) // pp
    vpp = vpp if vpp and vpp > 1 else None
    cfg = dataclasses.replace(cfg, num_mtp_layers=args.get("mtp_num_layers") or 0)

    dist.init_process_group("fake", rank=rank, world_size=world, store=FakeStore())
    try:
        ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                                     virtual_pipeline_model_parallel_size=vpp, context_parallel_size=cp,
                                     expert_model_parallel_size=ep, expert_tensor_parallel_size=etp,
                                     create_gloo_process_groups=False)
        # sequence_parallel changes no parameter; megatron-core's local (CPU) norms refuse it
        tconfig = make_transformer_config(
            cfg, **CPU_CONFIG, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16,
            perform_initialization=False, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp, context_parallel_size=cp, expert_model_parallel_size=ep,
            expert_tensor_parallel_size=etp, sequence_parallel=False, pipeline_model_parallel_layout=layout,
            num_layers_in_first_pipeline_stage=args.get("decoder_first_pipeline_num_layers"),
            num_layers_in_last_pipeline_stage=args.get("decoder_last_pipeline_num_layers"))
        params = buffers = 0
        with torch.device("meta"):
            for v in range(vpp or 1):
                model = build_gpt_model(cfg, tconfig, padded_vocab=cfg.vocab_size, use_te=False,
                                        vp_stage=v if vpp else None)
                params += sum(p.numel() for p in model.parameters())
                buffers += sum(b.numel() for n, b in model.named_buffers() if n.endswith("expert_bias"))
        where = {"pp_rank": ps.get_pipeline_model_parallel_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(),
                 "ep_rank": ps.get_expert_model_parallel_rank()}
        return {"rank": rank, **where, "params": params, "expert_bias": buffers}
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()


def main(src: str, dst: str) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    warnings.filterwarnings("ignore")
    from megatron_hy.config import load_config
    from megatron_hy.megatron.harness import apply_cpu_shims
    from megatron_hy.plan.planner import DEFAULT_CONFIG

    apply_cpu_shims()
    cfg = load_config(DEFAULT_CONFIG)
    out = {}
    for job in json.loads(open(src).read()):
        out[job["name"]] = [count_rank(cfg, job["args"], job["world"], r) for r in job["ranks"]]
    with open(dst, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
