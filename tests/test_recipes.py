"""The shipped recipes: each passes `hy3 plan` for the cluster it states, with flags ms-swift accepts,
the Hy3 MoE settings, a name that tells the truth, and together they cover the axes users ask for."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from conftest import REPO
from megatron_hy.plan import load_recipe, plan_recipe
from megatron_hy.plan.swift_args import check_args

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
NAME = re.compile(r"^(lora|full)-(80|96|141)g-(\d+)n-(\d+)k(-cp)?(-mtp)?(-offload)?$")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_passes_plan_for_its_own_cluster(path):
    r = load_recipe(path)
    assert check_args(r.args, "sft") == []
    plan = plan_recipe(r)
    assert plan.ok, plan.errors
    assert plan.warnings == []
    assert plan.worst.total_gib <= plan.capacity_gib


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_carries_hy3_moe_settings_and_a_header(path):
    r = load_recipe(path)
    a = r.args
    assert r.description.startswith("Hy3 ") and len(r.description.splitlines()) >= 2
    assert a["moe_router_load_balancing_type"] == "none" and a["moe_aux_loss_coeff"] == 0
    assert a["megatron_extra_kwargs"] == {"moe_router_score_function": "sigmoid",
                                          "moe_router_enable_expert_bias": True,
                                          "moe_router_bias_update_rate": 0.0}
    assert a["moe_grouped_gemm"] is True and a["moe_token_dispatcher_type"] == "alltoall"
    for path_key in ("model", "mcore_model", "dataset", "output_dir"):
        assert path_key not in a          # paths come from `hy3 launch --model/--dataset/...`


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_name_matches_its_contents(path):
    m = NAME.match(path.stem)
    assert m, f"{path.name}: name should be TUNER-MEMg-NODESn-SEQk[-cp][-mtp][-offload]"
    tuner, mem, nodes, seq_k, cp, mtp, offload = m.groups()
    r = load_recipe(path)
    assert r.args["tuner_type"] == tuner
    assert r.cluster.gpu_memory_gb == int(mem) and r.cluster.nodes == int(nodes) and r.cluster.gpus_per_node == 8
    assert r.args["max_length"] == int(seq_k) * 1024
    assert (r.args.get("context_parallel_size", 1) > 1) == bool(cp)
    assert bool(r.args.get("mtp_num_layers")) == bool(mtp)
    assert bool(r.args.get("optimizer_cpu_offload")) == bool(offload)
    if offload:
        assert r.cluster.host_memory_gb, "an offload recipe states the host memory it was planned for"


def test_recipes_cover_tuners_gpus_lengths_and_mtp():
    rs = [load_recipe(p) for p in RECIPES]
    assert {r.args["tuner_type"] for r in rs} == {"lora", "full"}
    for tuner in ("lora", "full"):
        assert {r.cluster.gpu_memory_gb for r in rs if r.args["tuner_type"] == tuner} == {80, 96, 141}
    lengths = {r.args["max_length"] for r in rs}
    assert min(lengths) == 4096 and max(lengths) == 262144
    for r in rs:
        if r.args["max_length"] >= 65536:
            assert r.args.get("context_parallel_size", 1) > 1, r.path
    assert {bool(r.args.get("mtp_num_layers")) for r in rs} == {True, False}


@pytest.mark.parametrize("name", ["full-80g-10n-4k", "full-96g-8n-4k", "full-141g-6n-4k"])
def test_smallest_full_finetune_recipes_need_their_node_count(name):
    # "Smallest" means the fewest nodes at which the planner says "fits" with its 8% headroom (not "tight"),
    # with every optimizer state on the GPU (the -offload recipe moves them to the host).
    # With one node fewer, no layout of the memory-lean family does: TP of 2, 4 or 8, whole-layer
    # recomputation, every pipeline depth that divides the 80 layers, the widest expert parallelism the
    # ranks of a stage allow.
    r = load_recipe(REPO / "recipes" / f"{name}.yaml")
    nodes = r.cluster.nodes - 1
    world = nodes * 8
    tried = 0
    for tp in (2, 4, 8):
        for pp in (1, 2, 4, 5, 8, 10, 16, 20):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            ep = max(e for e in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192) if (tp * dp) % e == 0)
            args = dict(r.args, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                        expert_model_parallel_size=ep, global_batch_size=dp * pp * 4)
            args.pop("pipeline_model_parallel_layout", None)
            plan = plan_recipe(replace(r, cluster=replace(r.cluster, nodes=nodes), args=args))
            assert plan.valid, plan.errors
            assert plan.verdict in ("does not fit (GPU memory)", "fits (tight)"), \
                f"{name} fits on {nodes} nodes with TP={tp} PP={pp} EP={ep}"
            tried += 1
    assert tried >= 3
