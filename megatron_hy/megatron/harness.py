"""Real megatron-core in N processes: Megatron's own parallel state, and on a CPU (gloo) the few shims its
CUDA-only calls need. Used by parity checks, tests and the offline converters; the parity check also starts
its ranks here on GPUs (NCCL, no CPU shims; megatron/device.py says what differs).

Every shim below names the megatron-core 0.16 call that needs it. They are applied only inside CPU
processes started here (`run_distributed`) or by `apply_cpu_shims()` in a CPU-only process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import time
import traceback
import warnings
from multiprocessing import forkserver
from typing import Any, Callable

from ..errors import Hy3Error

# TransformerConfig settings for CPU: no fused CUDA kernels, params built on the CPU in fp32, and
# the allgather token dispatcher (alltoall needs CUDA-side permutation kernels on 0.16).
CPU_CONFIG = dict(
    use_cpu_initialization=True,
    gradient_accumulation_fusion=False,
    moe_token_dispatcher_type="allgather",
    moe_grouped_gemm=False,
    bias_activation_fusion=False,
    bias_dropout_fusion=False,
    apply_rope_fusion=False,
    masked_softmax_fusion=False,
    persist_layer_norm=False,
    bf16=False,
    fp16=False,
)

_applied = False

# Log lines of megatron-core and torch that say nothing a hy3 user can act on: megatron-core 0.19 logs that GPTModel
# is deprecated each time one is built, and torch's CUDA build logs "No CUDA runtime is found" on a CPU.
QUIET_LOGGERS = ("megatron.core.models.gpt.gpt_model", "torch.utils.cpp_extension")


def quiet_logs() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def apply_cpu_shims() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    import torch
    import torch.distributed as dist

    # 1. torch.cuda.current_device(): TopKRouter allocates expert_bias / token counters on it,
    #    p2p_communication allocates pipeline receive buffers on it, RotaryEmbedding moves inv_freq to it.
    torch.cuda.current_device = lambda: "cpu"

    # 2. LanguageModule.setup_embeddings_and_output_layer calls weight.data.cuda() before all-reducing
    #    the embedding copy between the first and last pipeline stages (PP > 1 with MTP or tied weights).
    torch.Tensor.cuda = lambda self, *args, **kwargs: self

    # 3. dist_checkpointing (strategies/filesystem_async.py preload_tensors) and P2P communication call
    #    torch.cuda.synchronize() after host copies; on a CPU there is nothing to wait for.
    torch.cuda.synchronize = lambda *args, **kwargs: None

    # 4. moe_utils references te_general_gemm when transformer_engine is absent (no_te_gemm).
    no_te_gemm()

    # 5. CudaRNGStatesTracker.fork() (DotProductAttention dropout, MTP with sequence parallel) swaps
    #    CUDA RNG states; on CPU with dropout 0 a no-op context is equivalent.
    from megatron.core.tensor_parallel import random as mrandom

    class _CpuTracker(mrandom.CudaRNGStatesTracker):
        @contextlib.contextmanager
        def fork(self, name=None):
            yield

        def add(self, name, seed):
            pass

    mrandom._CUDA_RNG_STATE_TRACKER = _CpuTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    # 5b. tensor_parallel.checkpoint (selective recompute, e.g. recompute_modules [moe]) saves and restores
    #     the CUDA RNG state around the recomputed forward; on CPU the CPU state, saved beside it, is all there is.
    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda *args, **kwargs: None

    # 6. tensor_parallel.mappings gathers with all_gather_into_tensor and scatters with
    #    reduce_scatter_tensor (TP logits gather, MoE allgather dispatcher); gloo has neither.
    from megatron.core.tensor_parallel import mappings

    def all_gather_into(output, input_, group=None, async_op=False):
        n = dist.get_world_size(group)
        parts = list(output.chunk(n, 0))
        dist.all_gather(parts, input_.contiguous(), group=group)
        for dst, src in zip(output.chunk(n, 0), parts):
            if dst.data_ptr() != src.data_ptr():
                dst.copy_(src)

    def reduce_scatter_into(output, input_, op=dist.ReduceOp.SUM, group=None, async_op=False):
        full = input_.clone()
        dist.all_reduce(full, op=op, group=group)
        output.copy_(full.chunk(dist.get_world_size(group), 0)[dist.get_rank(group)])

    mappings.dist_all_gather_func = all_gather_into
    mappings.dist_reduce_scatter_func = reduce_scatter_into


def no_te_gemm() -> None:
    """megatron-core 0.16.1 `moe_utils.router_gating_linear` names `te_general_gemm`, which moe_utils defines only
    when transformer_engine imports: without it the first MoE forward raises NameError, on a CPU or a GPU."""
    import megatron.core.transformer.moe.moe_utils as moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def start_rank(device: str, rank: int) -> str:
    """In a rank process, before its process group: the device and shims. Returns the backend."""
    if device == "cpu":
        apply_cpu_shims()
        return "gloo"
    import torch

    torch.cuda.set_device(rank)  # one node: the local rank is the rank
    no_te_gemm()
    return "nccl"


def causal_mask(seq: int):
    """Explicit causal mask (True = masked): GPTModel's default mask is built on device 'cuda'."""
    import torch

    return torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool), diagonal=1)


def init_parallel(tp: int = 1, pp: int = 1, ep: int = 1, etp: int | None = None, vpp: int | None = None) -> None:
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp,
        expert_model_parallel_size=ep, expert_tensor_parallel_size=etp if etp is not None else tp)


def parallel_config(tp: int = 1, pp: int = 1, ep: int = 1, etp: int | None = None, vpp: int | None = None) -> dict:
    """The TransformerConfig fields that must agree with the initialized parallel state."""
    return dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                virtual_pipeline_model_parallel_size=vpp, expert_model_parallel_size=ep,
                expert_tensor_parallel_size=etp if etp is not None else tp, sequence_parallel=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# What the worker processes' parent (a fork server, see _context) imports once. Importing torch and
# megatron-core costs each process about 12 s of CPU on a 2-core VM, more than most parity runs compute.
# Third-party packages only: the server does not get the caller's sys.path (Python 3.11 forkserver ignores
# it), each worker does, so this package's own modules are imported by the workers (0.1 s).
_PRELOAD = ["torch", "torch.distributed", "megatron.core.models.gpt", "megatron.core.transformer.moe.moe_layer",
            "megatron.core.dist_checkpointing", "megatron.core.pipeline_parallel.p2p_communication"]
# The fork server's environment: one OpenMP thread (no thread pool exists to be lost in a fork) and no
# import-time warnings from megatron-core (transformer_engine and apex are absent on a CPU).
_SERVER_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _context(device: str = "cpu"):
    """The multiprocessing context whose workers are forked from one clean server process.

    The server is a new interpreter started on first use; it imports _PRELOAD and nothing else, and lives as
    long as this process, so every later run_distributed starts its ranks without importing anything again.
    GPU ranks start as fresh interpreters instead ("spawn"): a process forked after CUDA was initialized in
    its parent cannot use CUDA, and importing megatron-core may query the GPUs.
    """
    if device != "cpu":
        return mp.get_context("spawn")

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    saved = {k: os.environ.get(k) for k in _SERVER_ENV}
    os.environ.update(_SERVER_ENV)
    try:
        forkserver.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ctx


def _child(rank: int, world: int, port: int, fn: Callable, args: tuple, queue, env: dict, cwd: str,
           device: str = "cpu") -> None:
    # A forked worker starts with the fork server's environment and directory: take the caller's, as a
    # freshly started process would have.
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1",
                      TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    warnings.filterwarnings("ignore")
    quiet_logs()
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        backend = start_rank(device, rank)
        dist.init_process_group(backend, rank=rank, world_size=world)
        result = fn(rank, world, *args)
        # Plain bytes: tensors put on a Queue travel as shared-memory handles that die with this process.
        buf = io.BytesIO()
        torch.save(result, buf)
        queue.put((rank, "ok", buf.getvalue()))
    except Hy3Error as e:
        queue.put((rank, "user", str(e)))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def run_distributed(fn: Callable, world: int, *args, timeout: float = 900, device: str = "cpu") -> list[Any]:
    """Run fn(rank, world, *args) in `world` fresh processes; return each rank's result.

    device "cpu": over gloo with the CPU shims; "cuda": rank r on GPU r, over NCCL (megatron/device.py).
    fn must be importable (a module-level function) and its result picklable. A failure on any rank
    raises with that rank's traceback (or its one-line message for a Hy3Error).
    """
    ctx = _context(device)
    queue = ctx.Queue()
    port = free_port()
    env, cwd = dict(os.environ), os.getcwd()
    procs = [ctx.Process(target=_child, args=(r, world, port, fn, args, queue, env, cwd, device), daemon=False)
             for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    failure = None
    try:
        deadline = time.monotonic() + timeout
        while len(results) < world and failure is None:
            try:
                rank, status, payload = queue.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if r not in results and not p.is_alive()]
                if dead:
                    failure = ("error", f"rank {dead[0]}: process died with exit code {procs[dead[0]].exitcode}")
                elif time.monotonic() > deadline:
                    failure = ("error", f"timed out after {timeout}s waiting for ranks {sorted(set(range(world)) - set(results))}")
                continue
            if status == "ok":
                import torch

                results[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                failure = (status, f"rank {rank}: {payload}")
    finally:
        for p in procs:
            p.join(timeout=5 if failure else 60)
            if p.is_alive():
                p.kill()
    if failure:
        kind, msg = failure
        if kind == "user":
            raise Hy3Error(msg)
        raise RuntimeError(f"distributed Megatron run failed on {msg}")
    return [results[r] for r in range(world)]
