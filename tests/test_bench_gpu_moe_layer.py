"""benchmarks/gpu_moe_layer.py at tiny widths on the CPU: the same code a GPU run takes (megatron-core's
MoE decoder layer, forward+backward under each recompute setting, the planner's estimate beside it), so
the script keeps working without a GPU. Numbers at tiny widths mean nothing; the checks are structural
and on what autograd keeps, which recomputation must shrink."""

from __future__ import annotations

import json

from conftest import REPO, assert_ok, run_python


def test_runs_on_cpu_and_reports_measured_and_planned_numbers(tmp_path):
    out = tmp_path / "layer.json"
    proc = assert_ok(run_python(REPO / "benchmarks" / "gpu_moe_layer.py", "--seq", "32", "64", "--iters", "1",
                                "--warmup", "1", "--json", out, timeout=300))
    assert "planner s" in proc.stdout and "device cpu" in proc.stdout
    d = json.loads(out.read_text())
    rows = {(r["seq"], r["recompute"]): r for r in d["rows"]}
    assert set(rows) == {(s, k) for s in (32, 64) for k in ("none", "selective moe", "full")}
    for r in rows.values():
        assert r["measured"]["seconds"] > 0 and r["planner"]["flops"] > 0 and r["implied_mfu"] > 0
        assert r["measured"]["activation_peak_bytes"] is None            # a GPU-only measurement
    for seq in (32, 64):
        saved = [rows[seq, k]["measured"]["saved_bytes"] for k in ("full", "selective moe", "none")]
        stored = [rows[seq, k]["planner"]["stored_bytes"] for k in ("full", "selective moe", "none")]
        assert saved == sorted(saved) and saved[0] < saved[-1]
        assert stored == sorted(stored) and stored[0] < stored[-1]
    assert rows[64, "none"]["measured"]["saved_bytes"] > rows[32, "none"]["measured"]["saved_bytes"]
