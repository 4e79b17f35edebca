"""benchmarks/gpu_moe_layer.py at tiny widths on the CPU: the same code a GPU run takes (megatron-core's
MoE decoder layer cast to bf16 as Float16Module casts it, forward+backward under each recompute setting,
the planner's figures beside it), so the script keeps working without a GPU. Numbers at tiny widths mean
nothing; the checks are structural, on the cast, on the planner's figures and on what autograd keeps,
which recomputation must shrink."""

from __future__ import annotations

import json
import sys

from conftest import REPO, assert_ok, run_python

sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = ("none", "selective moe", "full")


def test_runs_on_cpu_and_reports_measured_and_planned_numbers(tmp_path):
    import _gpu
    from gpu_moe_layer import SETTINGS as ARGS

    from megatron_hy.plan.memory import layer_activations

    out = tmp_path / "layer.json"
    proc = assert_ok(run_python(REPO / "benchmarks" / "gpu_moe_layer.py", "--device", "cpu", "--tiny", "--seq", "32",
                                "64", "--iters", "1", "--warmup", "1", "--json", out, timeout=400))
    assert "planner s" in proc.stdout and "device cpu" in proc.stdout and "bf16, local spec" in proc.stdout
    d = json.loads(out.read_text())
    # cast as Float16Module casts: every parameter bf16, the RMSNorm weights included
    assert d["param_dtypes"]["norm_weights"] == ["bfloat16"] and list(d["param_dtypes"]["parameters"]) == ["bfloat16"]
    assert d["versions"]["megatron-core"] and d["spec"] == "local" and d["tiny"]
    rows = {(r["seq"], r["recompute"]): r for r in d["rows"]}
    assert set(rows) == {(s, k) for s in (32, 64) for k in SETTINGS}
    cfg = _gpu.hy3_config(tiny=True)
    for (seq, name), r in rows.items():
        assert r["measured"]["seconds"] > 0 and r["planner"]["flops"] > 0 and r["implied_mfu"] > 0
        assert r["measured"]["activation_peak_bytes"] is None            # a GPU-only measurement
        act = layer_activations(cfg, "moe", ARGS[name], seq)              # the planner's own figures, bf16
        assert r["planner"]["peak_bytes"] == act.peak
        assert r["planner"]["stored_bytes"] == act.stored + act.inputs
    for seq in (32, 64):
        saved = [rows[seq, k]["measured"]["saved_bytes"] for k in ("full", "selective moe", "none")]
        stored = [rows[seq, k]["planner"]["stored_bytes"] for k in ("full", "selective moe", "none")]
        assert saved == sorted(saved) and saved[0] < saved[-1]
        assert stored == sorted(stored) and stored[0] < stored[-1]
    assert rows[64, "none"]["measured"]["saved_bytes"] > rows[32, "none"]["measured"]["saved_bytes"]
