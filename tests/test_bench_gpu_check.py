"""`make gpu-check` (benchmarks/gpu_check.py) with its CPU halves: every step at tiny widths on the CPU, one
summary and a JSON report; on a GPU a skipped step is not a pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import REPO, assert_ok, run_python

sys.path.insert(0, str(REPO / "benchmarks"))

STEPS = ["environment", "moe layer", "stage", "make-tiny", "convert", "parity fp32 (torch_dist)"]


def test_cpu_halves_run_end_to_end_with_one_summary_and_a_report(tmp_path):
    report = tmp_path / "report.json"
    proc = assert_ok(run_python(REPO / "benchmarks" / "gpu_check.py", "--device", "cpu", "--tiny", "--report", report,
                                "--work", tmp_path / "work", timeout=1500))
    assert proc.stdout.startswith("gpu-check on cpu") and "verdict: " in proc.stdout and str(report) in proc.stdout
    d = json.loads(report.read_text())
    steps = {s["step"]: s for s in d["steps"]}
    assert list(steps) == STEPS and d["exit_status"] == 0 and d["device"] == "cpu" and d["tiny"]
    for name in ("environment", "moe layer", "stage", "make-tiny", "convert"):
        assert steps[name]["status"] == "passed", steps[name]
    assert steps["moe layer"]["results"]["rows"] and steps["stage"]["results"]["rows"]
    assert "selective moe_act" in steps["stage"]["skipped_settings"][0]
    parity = steps[STEPS[-1]]
    assert parity["status"] == "passed" and parity["results"]["passed"] is True, parity
    assert parity["results"]["device"] == "cpu" and parity["results"]["layers"] == [0, 1]
    # the checkpoints it made are gone (no --keep); the steps' logs stay beside the report's record of them
    assert not list((tmp_path / "work").glob("*/hf")) and not list((tmp_path / "work").glob("*/mcore"))
    assert all(Path(steps[n]["log"]).exists() for n in ("moe layer", "stage", "make-tiny", "convert"))


def test_a_skipped_step_fails_a_gpu_run_but_not_a_cpu_run():
    from gpu_check import verdict

    done = [{"step": "stage", "status": "passed"}]
    skipped = done + [{"step": "parity fp32 (HF)", "status": "skipped"}]
    failed = skipped + [{"step": "moe layer", "status": "failed"}]
    assert verdict(done, on_gpu=True)[0] == 0
    assert verdict(skipped, on_gpu=True) == (2, "INCOMPLETE: parity fp32 (HF) skipped or not run")
    assert verdict(skipped, on_gpu=False)[0] == 0
    assert verdict(failed, on_gpu=False) == (1, "FAILED: moe layer")
    assert verdict(done + [{"step": "parity bf16 (HF)", "status": "not run"}], on_gpu=True)[0] == 2
