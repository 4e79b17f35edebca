"""benchmarks/gpu_stage.py at tiny widths on the CPU: the first pipeline stage under 1F1B (megatron-core's
TransformerBlock of Hy3 layers cast like Float16Module) under every recompute setting the planner knows,
with `hy3 plan`'s figure for the same stage beside each. Peak memory is a GPU-only measurement; here the
checks are the schedule, the settings and their skips, the planner's figures and what autograd keeps."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import REPO, assert_ok, run_python

sys.path.insert(0, str(REPO / "benchmarks"))


def test_runs_every_recompute_setting_against_the_planners_stage(tmp_path):
    import _gpu

    from megatron_hy.plan.layout import RECOMPUTE_MODULES
    from megatron_hy.plan.memory import layer_elements

    out = tmp_path / "stage.json"
    proc = assert_ok(run_python(REPO / "benchmarks" / "gpu_stage.py", "--device", "cpu", "--tiny", "--layers", "2",
                                "--pp", "2", "--seq", "32", "--json", out, timeout=600))
    assert "stage 0 of PP 2 under 1F1B (2 micro-batches in flight, 4 per pass)" in proc.stdout
    d = json.loads(out.read_text())
    rows = {r["recompute"]: r for r in d["rows"]}
    assert list(rows) == ["none", *(f"selective {m}" for m in sorted(RECOMPUTE_MODULES)), "full"]
    assert d["param_dtypes"]["norm_weights"] == ["bfloat16"] and d["spec"] == "local"
    # without transformer-engine two settings cannot run in megatron-core; they are skipped, saying why
    skipped = {k: r["skipped"] for k, r in rows.items() if r["skipped"]}
    assert set(skipped) == {"selective moe_act", "selective layernorm"}
    assert all("transformer-engine" in why for why in skipped.values())
    cfg = _gpu.hy3_config(tiny=True, layers=2)
    tokens_bytes = 32 * 2                                             # bf16 elements per token -> bytes
    for name, r in rows.items():
        est = r["planner"]
        assert est["inflight"] == 2 and est["peak_bytes"] > 0 and est["flops_per_microbatch"] > 0
        if name not in skipped:
            got = r["measured"]
            assert got["saved_bytes"] > 0 and got["seconds_per_microbatch"] > 0
            assert got["activation_peak_bytes"] is None and r["within_bound"] is None     # GPU-only
    # the planner's stage is this stage: layer 0 dense and one MoE layer
    full_layers = layer_elements(cfg, "dense", set()) + layer_elements(cfg, "moe", set())
    assert rows["none"]["planner"]["stored_bytes"] == full_layers * tokens_bytes
    assert rows["full"]["planner"]["stored_bytes"] == 2 * cfg.hidden_size * tokens_bytes
    saved = [rows[k]["measured"]["saved_bytes"] for k in ("full", "selective moe", "none")]
    assert saved == sorted(saved) and saved[0] < saved[-1]


def test_bound_is_never_below_and_at_most_15_percent_above():
    from gpu_stage import BOUND, _row

    est = {"peak_bytes": 110.0, "stored_bytes": 50.0, "flops_per_microbatch": 1.0}

    def row(measured_peak):
        got = {"activation_peak_bytes": measured_peak, "saved_bytes": 60.0, "seconds_per_microbatch": 1.0}
        return _row("x", got, est, None, 1.0)

    assert BOUND == 1.15
    assert row(100.0)["within_bound"] and row(110.0)["within_bound"]
    assert not row(111.0)["within_bound"]                 # the planner below the measurement
    assert not row(95.0)["within_bound"]                  # 110 / 95 = 1.16: too far above
    assert row(100.0)["planner_over_measured"] == pytest.approx(1.1)


def test_first_stage_holds_pp_micro_batches_under_1f1b():
    import torch
    from gpu_stage import one_f_one_b

    live, most = [0], [0]

    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            live[0] += 1
            most[0] = max(most[0], live[0])
            return x * 2

        @staticmethod
        def backward(ctx, g):
            live[0] -= 1
            return g * 2

    class Cfg:
        hidden_size = 4

    for pp, m in ((4, 6), (4, 2), (1, 3)):
        live[0] = most[0] = 0
        one_f_one_b(lambda hidden_states, **kw: Count.apply(hidden_states), Cfg, 3, pp, m, torch.device("cpu"),
                    torch.float32, None)
        assert live[0] == 0 and most[0] == min(pp, m)
