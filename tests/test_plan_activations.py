"""The planner's activation model: what a pipeline rank stores per micro-batch, the backward of one layer on
top (what recomputation rebuilds, and the layer's activation gradients), and the calibration record of one
Hy3 MoE layer measured on an H200 (docs/training.md, "Calibration").

Expected numbers are worked out here from the Hy3 config (hidden 4096, 64 heads / 8 KV heads of 128, dense
FFN 13312 in layer 0, 192 experts of FFN 1536, top-8, one shared expert of 1536), not read from the planner.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import megatron_hy
from megatron_hy.config import load_config
from megatron_hy.plan import memory
from megatron_hy.plan.memory import ACTIVATION_CALIBRATION as C
from test_plan import plan

H, NH, NKV, HD, I, F, E, K = 4096, 64, 8, 128, 13312, 1536, 192, 8
ATTN = 3 * H + HD * (NH + NKV) + HD * (NH + 2 * NKV) + HD * NH     # stored by attention, per token


def moe_block(experts: int) -> int:
    """Per token: router logits and scores (fp32, in bf16 units), shared expert, top-8 routed copies."""
    return 4 * experts + 3 * F + K * (H + 4 * F)


MOE_LAYER = ATTN + H + moe_block(E)                 # no recomputation
DENSE_LAYER = ATTN + H + 3 * I
GRAD_MOE = 2 * H + 2 * K * H                        # layer in/out gradients + routed copies' out/in gradients
GRAD_DENSE = 2 * H + 3 * I
NONE = {"recompute_granularity": "none"}
MOE = {"recompute_granularity": "selective", "recompute_modules": ["moe"]}
FULL = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def one_node(**args):
    """PP1 TP8 SP EP8 at 4K tokens: 512 tokens per GPU, all 80 layers on the rank."""
    return plan(tensor_model_parallel_size=8, sequence_parallel=True, expert_model_parallel_size=8, **args).ranks[0]


def test_backward_of_one_layer_under_each_recompute_setting():
    size = 4096 / 8 * 2                             # bytes per per-token element on one GPU (SP share, bf16)
    none, moe, full = one_node(**NONE), one_node(**MOE), one_node(**FULL)
    # without recomputation nothing is rebuilt; the MoE layers' gradients are the largest (73,728 > 48,128)
    assert GRAD_MOE > GRAD_DENSE
    assert none.act.stored == pytest.approx((DENSE_LAYER + 79 * MOE_LAYER) * size)
    assert (none.act.rebuilt, none.act.gradients, none.act.inputs) == (0, pytest.approx(GRAD_MOE * size), 0)
    # recompute_modules [moe]: the MoE block is rebuilt in its layer's backward
    assert moe.act.stored == pytest.approx((DENSE_LAYER + 79 * (ATTN + H)) * size)
    assert moe.act.rebuilt == pytest.approx(moe_block(E) * size)
    assert moe.act.gradients == pytest.approx(GRAD_MOE * size)
    # full: one layer input per layer kept (exact, uncalibrated), the whole MoE layer rebuilt
    assert full.act.stored == 0 and full.act.inputs == pytest.approx(80 * H * size)
    assert full.act.rebuilt == pytest.approx(MOE_LAYER * size)
    assert full.act.gradients == pytest.approx(GRAD_MOE * size)
    for rm in (none, moe, full):
        # the last stage also holds bf16 logits and the fp32 copy the loss keeps: 6 bytes per vocab-parallel logit
        assert rm.act.logits == 4096 * 120832 / 8 * 6
        peak = C * (rm.act.stored + rm.act.rebuilt + rm.act.logits) + rm.act.inputs + rm.act.gradients
        assert rm.act.peak == pytest.approx(peak)
        assert rm.total_gib == pytest.approx((rm.weights + rm.grads + rm.optimizer + peak) / 2 ** 30
                                             + memory.RESERVE_GIB)


def test_first_pipeline_stage_holds_pp_micro_batches_and_one_backward():
    # PP=4 (20 layers per stage), 1F1B: stage p keeps PP - p micro-batches in flight, one backward on top
    args = dict(nodes=4, tensor_model_parallel_size=8, sequence_parallel=True, pipeline_model_parallel_size=4,
                expert_model_parallel_size=8, global_batch_size=32, **MOE)
    ranks = plan(**args).ranks
    size = 4096 / 8 * 2
    stage0 = (DENSE_LAYER + 19 * (ATTN + H)) * size
    assert [r.inflight for r in ranks] == [4, 3, 2, 1]
    assert ranks[0].act.stored == pytest.approx(stage0)
    assert ranks[0].act.peak == pytest.approx(C * (4 * stage0 + moe_block(E) * size) + GRAD_MOE * size)


def test_full_recompute_units_rebuild_all_their_layers():
    size = 4096 / 8 * 2
    two = one_node(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=2)
    assert two.act.inputs == pytest.approx(40 * H * size)
    assert two.act.rebuilt == pytest.approx(2 * MOE_LAYER * size)          # any unit of two MoE layers
    block = one_node(recompute_granularity="full", recompute_method="block", recompute_num_layers=30)
    # the first 30 layers keep their input; layers 30-79 (all MoE) keep everything
    assert block.act.inputs == pytest.approx(30 * H * size)
    assert block.act.stored == pytest.approx(50 * MOE_LAYER * size)
    assert block.act.rebuilt == pytest.approx(MOE_LAYER * size)


def test_calibration_record_one_h200_layer():
    """The fit, not a validation of it: one Hy3 MoE layer at real widths with 24 experts (one EP8 rank),
    top-8, bf16 cast like Float16Module, megatron-core 0.16.1 local spec, on one H200 (2026-12-04). Measured:
    stored activations / the count, and the peak of forward+backward / (1.5 x the old planner's figure,
    which was the stored count, plus the whole layer under full recompute). The planner must land within
    15% above each measured peak, never below, and its calibration must cover the stored ratios."""
    cfg = load_config(Path(megatron_hy.__file__).parent / "assets" / "hy3_config.json")
    cfg = dataclasses.replace(cfg, num_experts=24, num_mtp_layers=0)
    layer = ATTN + H + moe_block(24)
    kept = {"none": layer, "moe": ATTN + H, "full": H}               # the stored count, per token
    old_peak = {"none": layer, "moe": ATTN + H, "full": H + layer}
    stored_ratio = {"none": 1.28, "moe": 1.20, "full": 1.00}
    peak_ratio = {"none": (1.19, 1.19), "moe": (3.48, 3.47), "full": (1.16, 1.15)}   # seq 8192, 16384
    assert max(stored_ratio["none"], stored_ratio["moe"]) <= C <= 1.15 * stored_ratio["moe"]
    for name, setting in (("none", NONE), ("moe", MOE), ("full", FULL)):
        act = memory.layer_activations(cfg, "moe", setting, tokens=1)
        assert (act.stored + act.inputs) / 2 == kept[name]
        for ratio in peak_ratio[name]:
            measured = ratio * 1.5 * old_peak[name]
            assert 1.0 <= act.peak / 2 / measured <= 1.15, (name, act.peak / 2, measured)
