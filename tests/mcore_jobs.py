"""Rank functions the tests run in real gloo processes (importable by spawned children)."""

from __future__ import annotations

import contextlib
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path


@contextlib.contextmanager
def cuda_as_cpu():
    """A context in which megatron-core's training step runs on CPU tensors (beside harness.py's CPU shims).

    - Inside it, a tensor asked for on device "cuda" is made on the CPU, and `Tensor.type()` of a CPU
      tensor reads as its CUDA type. megatron-core needs both to train on a CPU:
      - optimizer/optimizer.py (0.16: line 481), MixedPrecisionOptimizer.__init__ (every DistributedOptimizer):
        `torch.tensor([0], dtype=torch.int, device='cuda')` (`_dummy_overflow_buf`, `_scale_one`);
      - optimizer/distrib_optimizer.py (0.16: line 431), `_build_model_and_main_param_groups`: raises TypeError
        unless `param.type()` is 'torch.cuda.FloatTensor', 'torch.cuda.HalfTensor' or 'torch.cuda.BFloat16Tensor';
      - pipeline_parallel/schedules.py, every forward_backward_* function:
        `total_num_tokens = torch.zeros([], dtype=torch.int, device="cuda")`.
    - `torch.cuda.current_stream()` is a stream that waits for nothing: megatron-core 0.19's
      param_and_grad_buffer.py `start_grad_sync` asks for it to wait on CUDA-graph events before reducing
      gradients; a CPU computes in order, so there is nothing to wait for.
    Nothing else changes: the optimizer, its sharding and the schedules are megatron-core's own.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class CudaAsCpu(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            out = func(*args, **kwargs)
            if func is torch.Tensor.type and len(args) == 1 and not kwargs and out.startswith("torch."):
                out = "torch.cuda." + out[len("torch."):]
            return out

    class InOrderStream:
        def wait_event(self, event):
            pass

        def wait_stream(self, stream):
            pass

    saved = torch.cuda.current_stream
    torch.cuda.current_stream = lambda *args, **kwargs: InOrderStream()
    try:
        with CudaAsCpu():
            yield
    finally:
        torch.cuda.current_stream = saved


def save_with_megatron(model, out: str | Path, iteration: int = 1, optimizer=None, scheduler=None) -> Path:
    """megatron-core's dist_checkpointing.save of a live model, laid out as ms-swift's save_mcore_checkpoint
    saves one (its sharded state dict metadata, FullyParallelSaveStrategyWrapper over the data-parallel group),
    with the optimizer's sharded state dict and the scheduler's state when given. Every rank calls it."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    from megatron_hy.formats.torch_dist import CONTENT_METADATA, TRACKER, iter_dir_name
    from megatron_hy.megatron.weights import model_sharded_state_dict

    it = Path(out) / iter_dir_name(iteration)
    if dist.get_rank() == 0:
        it.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    args = Namespace(tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
                     pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
                     expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
                     no_save_optim=optimizer is None, no_save_rng=True, consumed_train_samples=0)
    state = {"model": model_sharded_state_dict(model), "args": args, "checkpoint_version": 3.0, "iteration": iteration}
    dp_group = ps.get_data_parallel_group(with_context_parallel=True)
    if optimizer is not None:
        with cuda_as_cpu():
            state["optimizer"] = optimizer.sharded_state_dict(state, metadata=dict(CONTENT_METADATA, dp_cp_group=dp_group))
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    strategy = FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(), dp_group)
    with cuda_as_cpu():
        dist_checkpointing.save(state, str(it), strategy, content_metadata=CONTENT_METADATA)
    dist.barrier()
    if dist.get_rank() == 0:
        (Path(out) / TRACKER).write_text(str(iteration))
    return it


def _cpu_model(hf_dir: str, tp: int, pp: int, ep: int, etp: int | None = None):
    """The Hy3 GPTModel of this rank's stage under a layout (parallel state initialized here), filled from HF."""
    import torch

    from megatron_hy.formats.hf_checkpoint import HFCheckpoint
    from megatron_hy.megatron.harness import CPU_CONFIG, init_parallel, parallel_config
    from megatron_hy.megatron.model import build_gpt_model, make_transformer_config
    from megatron_hy.megatron.weights import load_into_model

    init_parallel(tp, pp, ep, etp)
    hf = HFCheckpoint(hf_dir)
    tconfig = make_transformer_config(hf.config, **CPU_CONFIG, params_dtype=torch.float32, pipeline_dtype=torch.float32,
                                      batch_p2p_comm=False, **parallel_config(tp, pp, ep, etp))
    model = build_gpt_model(hf.config, tconfig, use_te=False)
    load_into_model(model, hf.config, hf.read)
    return model, hf.config


def save_with_megatron_from_hf(rank: int, world: int, hf_dir: str, out: str, tp: int, pp: int, ep: int) -> bool:
    """Build the Hy3 GPTModel under a layout, fill it from HF, save it with megatron-core's dist_checkpointing."""
    model, _ = _cpu_model(hf_dir, tp, pp, ep)
    save_with_megatron(model, out)
    return True


@dataclass
class TrainJob:
    hf_dir: str       # the starting weights (fp32, so that the trained fp32 weights convert without rounding)
    out: str          # where megatron-core saves the trained checkpoint
    tokens: list      # [b, s] token ids on which the trained model's logits are reported
    pp: int = 2
    ep: int = 2
    steps: int = 2
    micro_batches: int = 2
    micro_batch: int = 2
    seq: int = 8


def train_and_save(rank: int, world: int, job: TrainJob) -> dict:
    """A short megatron-core training run on CPU, saved as `megatron sft` saves one.

    TP1 x PP x EP, DP filling the world: the Hy3 GPTModel from HF, wrapped in megatron-core's
    DistributedDataParallel, its distributed optimizer (Adam; a ChainedOptimizer of the dense and the expert
    parameters), its 1F1B pipeline schedule over `micro_batches` micro-batches of different random tokens on
    each data-parallel rank, and an LR scheduler; `steps` optimizer steps. Then weights, optimizer state and
    scheduler go into one dist_checkpointing.save. Reports every rank's trained weights (all replicas), the
    trained model's logits on job.tokens, and what the steps did.
    """
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_hy.megatron.harness import causal_mask
    from megatron_hy.megatron.parity import forward
    from megatron_hy.megatron.weights import export_pieces

    model, cfg = _cpu_model(job.hf_dir, 1, job.pp, job.ep)
    tconfig = model.config
    ddp = DistributedDataParallel(tconfig, DistributedDataParallelConfig(use_distributed_optimizer=True,
                                                                          grad_reduce_in_fp32=True), model)
    with cuda_as_cpu():
        opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=1e-4, bf16=False,
                                                     params_dtype=torch.float32, use_distributed_optimizer=True), [ddp])
    sched = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=0,
                                    lr_decay_steps=job.steps, lr_decay_style="cosine", start_wd=0.0, end_wd=0.0,
                                    wd_incr_steps=job.steps, wd_incr_style="constant")
    tconfig.finalize_model_grads_func = finalize_model_grads  # as Megatron-LM's training loop sets them
    tconfig.grad_scale_func = opt.scale_loss
    gen = torch.Generator().manual_seed(1000 + ps.get_data_parallel_rank())
    batches = iter(lambda: torch.randint(0, cfg.vocab_size, (job.micro_batch, job.seq), generator=gen), None)
    positions = torch.arange(job.seq)[None].expand(job.micro_batch, -1)

    def step(data, m):
        ids = next(data)
        loss = m(ids, positions, causal_mask(job.seq), labels=ids)  # per-token loss [b, s]; MTP loss rides along
        return loss, lambda out: (out.mean(), {"lm loss": out.detach().mean()})

    report = {"losses": [], "grad_norms": []}
    ddp.train()
    for _ in range(job.steps):
        ddp.zero_grad_buffer()
        opt.zero_grad()
        with cuda_as_cpu():
            losses = get_forward_backward_func()(forward_step_func=step, data_iterator=batches, model=[ddp],
                                                 num_microbatches=job.micro_batches, seq_length=job.seq,
                                                 micro_batch_size=job.micro_batch, forward_only=False)
            ok, grad_norm, _ = opt.step()
        if not ok:
            raise RuntimeError("megatron-core's optimizer skipped the step")
        sched.step(increment=1)
        report["losses"].append([float(x["lm loss"]) for x in losses])
        report["grad_norms"].append(float(grad_norm))
    save_with_megatron(model, job.out, iteration=job.steps, optimizer=opt, scheduler=sched)
    model.eval()
    logits, mtp = forward([model], torch.tensor(job.tokens), cfg.num_mtp_layers)
    if logits is not None and ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
        report["logits"] = logits[..., : cfg.vocab_size].numpy()
        report["mtp"] = [m[..., : cfg.vocab_size].numpy() for m in mtp]
    report["pieces"] = export_pieces(model, owner_only=False)
    report["dp_rank"] = ps.get_data_parallel_rank()
    return report


def parity_then_train(rank: int, world: int, parity_job, train_job: TrainJob) -> dict:
    """Two world-4 runs in one set of processes (starting 4 processes costs more than either run):
    a parity run under parity_job's layout, then, in a fresh parallel state, train_and_save."""
    from megatron.core import parallel_state as ps

    from megatron_hy.megatron.parity import rank_main

    parity = rank_main(rank, world, parity_job)
    ps.destroy_model_parallel()
    return {"parity": parity, "train": train_and_save(rank, world, train_job)}
