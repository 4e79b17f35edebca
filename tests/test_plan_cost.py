"""The step-time model (megatron_hy/plan/cost.py): a model, not a measurement. These tests pin what it
computes to FLOP counts worked out by hand from the Hy3 config, to the schedule's bubble formula and to
its constants, not to any measured speed."""

from __future__ import annotations

import pytest

from megatron_hy.plan import cost
from megatron_hy.plan.cost import DEFAULT_COST
from megatron_hy.plan.planner import plan_recipe
from megatron_hy.plan.recipe import Cluster, Recipe
from test_plan import ATTN, DENSE_MLP, EXPERTS_PER_LAYER, HY3_MOE, ROUTER, SHARED, H, HD, L, NH, V


def plan(nodes=1, gpus=8, mem=141, **args):
    full = {**HY3_MOE, "max_length": 4096, "tensor_model_parallel_size": 8, "sequence_parallel": True,
            "expert_model_parallel_size": 8, "global_batch_size": 16, **args}
    return plan_recipe(Recipe("t.yaml", Cluster(nodes, gpus, mem), full))


def test_active_parameters_per_token_match_the_model_card_21b():
    assert round(cost.active_params_per_token(plan().cfg) / 1e9) == 21


def test_compute_is_six_flops_per_active_weight_per_token_plus_attention_at_the_stated_mfu():
    p = plan(recompute_granularity="none")
    seq, topk = 4096, 8
    weights = L * ATTN + DENSE_MLP + (L - 1) * (ROUTER + topk * EXPERTS_PER_LAYER // 192 + SHARED) + V * H
    core = L * 2 * seq * NH * HD                       # QK^T and PV per token, causal half, forward
    flops = 16 * seq * (6 * weights + 3 * core)        # 16 sequences per step
    seconds = flops / (8 * 989e12 * DEFAULT_COST.mfu)   # 8 GPUs (TP=8) at the H200's peak
    assert p.step.compute == pytest.approx(seconds, rel=1e-9)


def test_recompute_adds_forward_flops():
    none = plan(recompute_granularity="none").step.compute
    full = plan(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1).step.compute
    moe = plan(recompute_granularity="selective", recompute_modules=["moe"]).step.compute
    assert none < moe < full < none * 4 / 3       # full redoes every layer's forward, not the output layer's


def test_pipeline_bubble_is_pp_minus_one_over_vpp_micro_batch_times():
    for vpp in (1, 2):
        p = plan(nodes=2, pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=vpp,
                 expert_model_parallel_size=8, global_batch_size=16)
        t = p.step
        per_mb = (t.seconds - t.bubble - t.data_parallel - t.optimizer) / p.layout.microbatches
        assert t.bubble == pytest.approx((2 - 1) / vpp * per_mb)


def test_peers_on_other_nodes():
    assert cost._off_node_share(8, 1, 8) == 0                   # one node
    assert cost._off_node_share(16, 1, 8) == pytest.approx(8 / 15)
    assert cost._off_node_share(4, 8, 8) == 1                   # one rank per node


def test_expert_all_to_all_across_nodes_costs_more_than_inside_one():
    inside = plan(nodes=2, tensor_model_parallel_size=1, sequence_parallel=False, expert_model_parallel_size=8,
                  global_batch_size=16).step.expert
    across = plan(nodes=2, tensor_model_parallel_size=1, sequence_parallel=False, expert_model_parallel_size=16,
                  global_batch_size=16).step.expert
    assert across > inside > 0


def test_offloaded_optimizer_step_is_pcie_copies_and_host_adam():
    base = dict(nodes=4, gpus=8, mem=80, tensor_model_parallel_size=8, pipeline_model_parallel_size=4,
                global_batch_size=64, use_precision_aware_optimizer=True, optimizer_cpu_offload=True,
                recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    p = plan(**base, optimizer_offload_fraction=1.0)
    worst = max(p.ranks, key=lambda r: r.optimizer_elements).optimizer_elements
    expected = worst * 8 / (DEFAULT_COST.pcie_gbps * 1e9) + worst / (DEFAULT_COST.host_adam_gelems * 1e9)
    assert p.step.optimizer == pytest.approx(expected)
    assert plan(**base, optimizer_offload_fraction=0.5).step.optimizer < p.step.optimizer


def test_refitted_mfu_reproduces_a_measured_step_time(capsys):
    import dataclasses
    import json

    from conftest import REPO
    from megatron_hy.cli import main

    p = plan(nodes=2, pipeline_model_parallel_size=2, expert_model_parallel_size=8, global_batch_size=32)
    measured = 2.5 * p.step.seconds
    mfu = p.step.refit_mfu(measured)
    assert mfu < DEFAULT_COST.mfu and p.step.refit_mfu(p.step.seconds) == pytest.approx(DEFAULT_COST.mfu)
    again = cost.step_time(p.cfg, p.model, p.layout, p.stage_params, p.ranks, p.recipe.args, 141, 8, 0.0, 4, False,
                           cost=dataclasses.replace(DEFAULT_COST, mfu=mfu))
    assert again.seconds == pytest.approx(measured)
    assert p.step.refit_mfu(p.step.data_parallel) is None        # less than the modelled communication
    rc = main(["plan", str(REPO / "recipes" / "full-80g-10n-4k.yaml"), "--measured-step", "10", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 0 and 0 < d["refit_mfu"] < d["mfu"] and d["measured_seconds"] == 10
