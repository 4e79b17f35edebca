"""Optimizer CPU offload and host memory in `hy3 plan`: what stays on the GPU, what goes to the host, per
node, and a verdict that covers both. Expected bytes are worked out by hand from megatron-core's
HybridDeviceOptimizer (an offloaded element keeps an fp32 master, two fp32 moments and a pinned fp32
gradient copy on the host; without the precision-aware optimizer the distributed optimizer's fp32 master
also stays on the GPU) and from the Hy3 counts in test_plan.py."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, assert_one_error, run_cli
from megatron_hy.cli import main
from megatron_hy.plan import host
from megatron_hy.plan.memory import GIB
from megatron_hy.plan.planner import plan_recipe
from megatron_hy.plan.recipe import Cluster, Recipe
from test_plan import ATTN, DENSE_MLP, EXPERTS_PER_LAYER, HY3_MOE, NORMS, ROUTER, SHARED, H, L, V

OFFLOAD = REPO / "recipes" / "full-80g-4n-4k-offload.yaml"
# one GPU of a TP8 EP8 PP1 node: 1/8 of the TP-split tensors and of the experts, all norms and routers
PER_GPU = (L * ATTN + DENSE_MLP + (L - 1) * SHARED + 2 * V * H) // 8 + L * NORMS + H + (L - 1) * ROUTER \
    + (L - 1) * EXPERTS_PER_LAYER // 8


def plan(host_gb=None, **args):
    full = {**HY3_MOE, "max_length": 4096, "tensor_model_parallel_size": 8, "sequence_parallel": True,
            "expert_model_parallel_size": 8, "recompute_granularity": "full", "recompute_method": "uniform",
            "recompute_num_layers": 1, "dataloader_num_workers": 2, **args}
    return plan_recipe(Recipe("t.yaml", Cluster(1, 8, 141, "", host_gb), full))


def test_offloaded_optimizer_bytes_on_gpu_and_host():
    # DP = EDP = 1: each GPU's optimizer shard is every element it holds
    none = plan().ranks[0]
    aware = plan(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0, use_precision_aware_optimizer=True)
    plain = plan(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0)
    half = plan(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5, use_precision_aware_optimizer=True)
    assert none.optimizer == pytest.approx(PER_GPU * 12) and none.host_optimizer == 0
    assert aware.ranks[0].optimizer == 0
    assert aware.ranks[0].host_optimizer == pytest.approx(PER_GPU * 16)
    assert plain.ranks[0].optimizer == pytest.approx(PER_GPU * 4)          # the fp32 master stays on the GPU
    assert plain.ranks[0].host_optimizer == pytest.approx(PER_GPU * 16)
    assert half.ranks[0].optimizer == pytest.approx(PER_GPU * 6)
    assert half.ranks[0].host_optimizer == pytest.approx(PER_GPU * 8)


def test_host_memory_per_node_adds_processes_and_dataloader_workers():
    p = plan(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0, use_precision_aware_optimizer=True)
    (node,) = p.nodes
    assert node.gpus_by_stage == {0: 8}
    pinned = 2 * 2 * 4096 * 4 * 8           # workers x prefetch x tokens x (ids, labels, positions, mask) x int64
    expected = 8 * (PER_GPU * 16 + host.HOST_PROCESS_GIB * GIB + 2 * host.HOST_WORKER_GIB * GIB + pinned)
    assert node.total_gib * GIB == pytest.approx(expected)


def test_nodes_holding_two_pipeline_stages_add_both():
    # 2 nodes of 8, TP2 PP4 EP4: a stage has 4 GPUs, so each node holds two stages
    p = plan_recipe(Recipe("t.yaml", Cluster(2, 8, 141), {
        **HY3_MOE, "max_length": 4096, "tensor_model_parallel_size": 2, "sequence_parallel": True,
        "pipeline_model_parallel_size": 4, "expert_model_parallel_size": 4, "global_batch_size": 16,
        "optimizer_cpu_offload": True, "use_precision_aware_optimizer": True}))
    assert [n.gpus_by_stage for n in p.nodes] == [{0: 4, 1: 4}, {2: 4, 3: 4}]
    first = p.nodes[0]
    assert first.optimizer == pytest.approx(4 * (p.ranks[0].host_optimizer + p.ranks[1].host_optimizer))


def test_fits_on_the_gpu_but_not_on_the_host(capsys):
    rc = main(["plan", str(OFFLOAD), "--host-mem", "1024", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 1 and d["valid"] and d["fits_gpu"] and not d["fits_host"] and not d["fits"]
    assert d["verdict"] == "does not fit (host memory)"
    assert d["host_per_node_gib"] > d["cluster"]["host_capacity_gib"] == pytest.approx(1024 * 0.95)


def test_fits_on_the_host_but_not_on_the_gpu(capsys):
    rc = main(["plan", str(OFFLOAD), "--set", "optimizer_cpu_offload=false", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 1 and d["valid"] and d["fits_host"] and not d["fits_gpu"]
    assert d["verdict"] == "does not fit (GPU memory)"
    assert d["memory_per_gpu_gib"] > d["cluster"]["capacity_gib"]


def test_offload_recipe_fits_both_and_the_report_shows_the_host(capsys):
    rc = main(["plan", str(OFFLOAD)])
    out = capsys.readouterr().out
    assert rc == 0 and "verdict  fits" in out and "GiB host memory on the fullest node" in out
    assert "95% of the optimizer states on the host" in out


def test_offload_without_a_host_size_is_warned_about():
    p = plan(optimizer_cpu_offload=True)
    assert p.fits_host and any("cluster.host_memory_gb" in w for w in p.warnings)


def test_bad_host_memory_is_a_one_line_error(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("cluster: {nodes: 1, gpus_per_node: 8, gpu_memory_gb: 80, host_memory_gb: -4}\nargs: {}\n")
    assert_one_error(run_cli("plan", f), "host_memory_gb", "positive")
    assert_one_error(run_cli("plan", OFFLOAD, "--host-mem", "0"), "--host-mem", "positive")
