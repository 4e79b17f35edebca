"""Host memory per node of a `megatron sft` run.

    node = sum over its GPUs' training processes of
           (optimizer states offloaded to the host + HOST_PROCESS_GIB
            + dataloader workers x HOST_WORKER_GIB + pinned batch buffers)

The offloaded optimizer states are exact counts times bytes (memory.Precision.host_optimizer_bytes:
fp32 master, fp32 moments and a pinned fp32 gradient copy per offloaded element). The per-process
and per-worker figures are estimates, not measured with this stack: a CUDA process's host side,
torch, transformer-engine, NCCL and ms-swift take a few GiB each, and every dataloader worker is a
forked copy of the process touching its dataset. Ranks fill nodes in Megatron's order (TP fastest,
PP slowest), so a node holds GPUs of one pipeline stage, or of several when a stage has fewer GPUs
than a node. Capacity is `cluster.host_memory_gb` (or `--host-mem`), in GiB as `free -g` reports it,
less HOST_RESERVE_SHARE for the OS and the page cache the checkpoint is read through.
"""

from __future__ import annotations

from dataclasses import dataclass

from .layout import Layout
from .memory import GIB, RankMemory

HOST_PROCESS_GIB = 6.0
HOST_WORKER_GIB = 1.0
HOST_RESERVE_SHARE = 0.05


def host_capacity_gib(host_memory_gb: float | None) -> float | None:
    return None if host_memory_gb is None else host_memory_gb * (1 - HOST_RESERVE_SHARE)


@dataclass
class NodeHost:
    node: int
    gpus_by_stage: dict        # pp rank -> GPUs of this node in that stage
    optimizer: float           # bytes
    processes: float
    dataloader: float

    @property
    def total_gib(self) -> float:
        return (self.optimizer + self.processes + self.dataloader) / GIB

    def breakdown_gib(self) -> dict:
        return {"optimizer": self.optimizer / GIB, "processes": self.processes / GIB,
                "dataloader": self.dataloader / GIB, "total": self.total_gib}


def dataloader_bytes(args: dict, lay: Layout) -> float:
    """Per training process: its dataloader workers, and the pinned batches they keep ready
    (input ids, labels, position ids and the loss mask: int64 per token)."""
    workers = args.get("dataloader_num_workers", 4)
    pinned = 0.0
    if args.get("dataloader_pin_memory", True):
        prefetch = args.get("dataloader_prefetch_factor", 2) if workers else 1
        pinned = max(workers, 1) * prefetch * lay.mbs * lay.seq * 4 * 8
    return workers * HOST_WORKER_GIB * GIB + pinned


def node_hosts(lay: Layout, ranks: list[RankMemory], gpus_per_node: int, args: dict) -> list[NodeHost]:
    """Host memory of every node (nodes with the same mix of stages are listed once each)."""
    per_stage = lay.world // lay.pp
    loader = dataloader_bytes(args, lay)
    if per_stage % gpus_per_node == 0:     # each node inside one stage: one node per stage tells it all
        mixes = [(p * per_stage // gpus_per_node, {p: gpus_per_node}) for p in range(lay.pp)]
    else:
        mixes, seen = [], set()
        for n in range(lay.world // gpus_per_node):
            stages: dict[int, int] = {}
            for r in range(n * gpus_per_node, (n + 1) * gpus_per_node):
                stages[r // per_stage] = stages.get(r // per_stage, 0) + 1
            key = tuple(sorted(stages.items()))
            if key not in seen:
                seen.add(key)
                mixes.append((n, stages))
    out = []
    for n, stages in mixes:
        gpus = sum(stages.values())
        optim = sum(ranks[p].host_optimizer * k for p, k in stages.items())
        out.append(NodeHost(n, stages, optim, gpus * HOST_PROCESS_GIB * GIB, gpus * loader))
    return out
