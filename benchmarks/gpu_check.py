"""Every GPU check of megatron-hy on one H100/H200, in under 8 minutes: `make gpu-check`.

It uses the Python it runs under, with the CUDA torch and megatron-core (0.16.1 or 0.19.x) already
installed there, and transformer-engine when it imports (not needed); it installs nothing and makes no
environment. Each step is a child process with its own time limit, all of them inside one budget (default
480 s): a step that would run past the budget gets only what is left, and steps after an exhausted budget
are reported as not run.

Steps, with their limits and what they are expected to take on an H200 (from the timings of the one
H200 session so far, docs/benchmarks.md "GPU checks": a real-width MoE layer's forward+backward takes
0.04-0.12 s, `hy3 convert hf-to-mcore` 30 s for 17 GB, a megatron-core process ~15 s to start):
  1. environment   the GPU, torch, megatron-core, transformer-engine (in this process)           ~1 s
  2. moe layer     benchmarks/gpu_moe_layer.py at real widths, 8K and 16K tokens, 3 recompute
                   settings: MFU and the layer's peak against the planner's     limit 150 s, ~45 s
  3. stage         benchmarks/gpu_stage.py: stage 0 of PP 4 under 1F1B, 4 layers, 8K tokens, every
                   recompute setting: peak against the planner's per-stage figure, which must be
                   within [1, 1.15] x the measured peak                          limit 200 s, ~70 s
  4. make-tiny     `hy3 make-tiny` of a wider Hy3 (hidden 1024, 16 experts, 3 layers + MTP)
                                                                                   limit 60 s, ~15 s
  5. convert       `hy3 convert hf-to-mcore` of it                                 limit 60 s, ~15 s
  6. parity        `hy3 verify parity HF --device cuda --layers 0,1 --dtype fp32|bf16 --json` from
                   HF (fp32, bf16) and from the torch_dist (fp32, --mcore); each must print
                   "passed": true (on a CPU only the torch_dist one)     limit 120 s each, ~30 s each
Expected total about 4 minutes; the limits add up to more than the budget on purpose, the budget wins.

It prints one summary and writes a JSON report (--report, default bench-out/gpu-check.json) with every
step's command, status, seconds, the tail of its output and, for the benchmarks, their own JSON.
Exit status: 0 when every step passed; 1 when one failed; 2 on a GPU when a step was skipped or not run
(an incomplete GPU check is not a pass). On a CPU (`--device cpu --tiny`, what CI runs) there is no
budget and skipped steps are allowed: the benchmarks run at tiny widths with one setting each (numbers
meaningless; their own tests run every setting), and one parity run (fp32 from the torch_dist).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUDGET_S = 480
LIMITS = {"moe layer": 150, "stage": 200, "make-tiny": 60, "convert": 60, "parity": 120}
# tiny (CPU) runs are slower per step on a shared 2-core machine and are not budgeted for the GPU
TINY_LIMITS = {"moe layer": 400, "stage": 500, "make-tiny": 120, "convert": 180, "parity": 400}
WIDER = ["--hidden", "1024", "--heads", "16", "--kv-heads", "2", "--head-dim", "128", "--ffn", "2816",
         "--expert-ffn", "384", "--experts", "16", "--top-k", "4", "--vocab", "8192", "--layers", "3",
         "--dense-layers", "1", "--mtp", "1"]
PARITY = [("parity fp32 (HF)", "fp32", False), ("parity fp32 (torch_dist)", "fp32", True),
          ("parity bf16 (HF)", "bf16", False)]
# on a CPU one run shows the command line works (each takes a minute or more on 2 shared cores)
PARITY_TINY = [("parity fp32 (torch_dist)", "fp32", True)]


class Run:
    """The steps so far, the budget, and where the children's output goes."""

    def __init__(self, budget: float, work: Path, tiny: bool):
        self.t0 = time.monotonic()
        self.budget = budget
        self.work = work
        self.tiny = tiny
        self.steps: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def record(self, name: str, status: str, seconds: float = 0.0, **extra) -> dict:
        step = {"step": name, "status": status, "seconds": round(seconds, 1), **extra}
        self.steps.append(step)
        line = f"[gpu-check] {name}: {status} ({seconds:.1f} s)"
        if extra.get("reason"):
            line += f": {extra['reason']}"
        print(line, file=sys.stderr, flush=True)
        return step

    def child(self, name: str, cmd: list[str], limit_key: str) -> tuple[dict, str]:
        """Run cmd with its limit (never past the budget; tiny runs are not budgeted); (step, stdout)."""
        limit = (TINY_LIMITS if self.tiny else LIMITS)[limit_key]
        if not self.tiny:
            if self.left() < 5:
                return self.record(name, "not run", reason="the budget is spent", command=_show(cmd)), ""
            limit = min(limit, self.left())
        log = self.work / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".log")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        print(f"[gpu-check] {name}: {_show(cmd)} (limit {limit:.0f} s)", file=sys.stderr, flush=True)
        t = time.monotonic()
        with open(log, "w") as err:
            # a session of its own, so that a timeout ends the step's own children too (parity starts some)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO, env=env,
                                    start_new_session=True)
            try:
                out, _ = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
                return self.record(name, "failed", time.monotonic() - t, reason=f"timed out after {limit:.0f} s",
                                   command=_show(cmd), log=str(log), tail=_tail(out, log)), out
        seconds = time.monotonic() - t
        if proc.returncode:
            return self.record(name, "failed", seconds, reason=f"exit status {proc.returncode}", command=_show(cmd),
                               log=str(log), tail=_tail(out, log)), out
        return self.record(name, "passed", seconds, command=_show(cmd), log=str(log), tail=_tail(out, None)), out


def _show(cmd: list[str]) -> str:
    return " ".join(str(c) for c in cmd).replace(sys.executable, "python")


def _tail(stdout: str, log: Path | None, lines: int = 12) -> list[str]:
    text = (stdout or "") + ("\n" + log.read_text(errors="replace") if log and log.exists() else "")
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def hy3(*args) -> list[str]:
    return [sys.executable, "-m", "megatron_hy.cli", *map(str, args)]


def environment(run: Run, on_gpu: bool) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    import _gpu

    v = _gpu.versions()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if on_gpu and not gpu:
        return run.record("environment", "failed", reason="--device cuda, but torch sees no GPU", versions=v)
    if not v.get("megatron-core") or v["megatron-core"] == "unknown":
        return run.record("environment", "failed", reason="megatron-core is not installed in this Python", versions=v)
    return run.record("environment", "passed", versions=v, gpu=gpu, python=sys.executable)


def moe_layer(run: Run, device: str) -> None:
    out = run.work / "gpu_moe_layer.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_moe_layer.py"), "--device", device, "--json", out]
    # tiny: one setting (the script's own test runs them all)
    cmd += ["--tiny", "--settings", "none", "--seq", "32", "--warmup", "0", "--iters", "1"] if run.tiny \
        else ["--seq", "8192", "16384"]
    step, _ = run.child("moe layer", cmd, "moe layer")
    if step["status"] == "passed":
        d = json.loads(out.read_text())
        step["results"] = d
        mfu = [r["implied_mfu"] for r in d["rows"]]
        ratio = [r["peak_over_planner"] for r in d["rows"] if r["peak_over_planner"]]
        step["summary"] = f"MFU {min(mfu):.2f}-{max(mfu):.2f}" + (
            f"; planner / measured peak {1 / max(ratio):.2f}-{1 / min(ratio):.2f}" if ratio else "")


def stage(run: Run, device: str) -> None:
    out = run.work / "gpu_stage.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_stage.py"), "--device", device, "--json", out]
    if run.tiny:
        # tiny: one setting that runs and one that is skipped without transformer-engine (tests/test_bench_gpu_stage.py
        # runs them all)
        cmd += ["--tiny", "--layers", "2", "--pp", "2", "--seq", "32", "--settings", "none", "selective moe_act"]
    step, _ = run.child("stage", cmd, "stage")
    if step["status"] != "passed":
        return
    d = json.loads(out.read_text())
    step["results"] = d
    measured = [r for r in d["rows"] if r.get("within_bound") is not None]
    skipped = [f"{r['recompute']}: {r['skipped']}" for r in d["rows"] if r["skipped"]]
    if measured:
        ratios = [r["planner_over_measured"] for r in measured]
        step["summary"] = f"planner / measured peak {min(ratios):.2f}-{max(ratios):.2f} over {len(measured)} settings"
        bad = [r["recompute"] for r in measured if not r["within_bound"]]
        if bad:
            step["status"] = "failed"
            step["reason"] = f"the planner's per-stage peak is outside [1, {d['bound']}] x the measured peak for {bad}"
    else:
        step["summary"] = f"{len(d['rows']) - len(skipped)} settings ran (no peak measured off a GPU)"
    if skipped:
        step["skipped_settings"] = skipped
        step["summary"] += f"; {len(skipped)} skipped"


def checkpoints_and_parity(run: Run, device: str, layers: str) -> None:
    hf, mcore = run.work / "hf", run.work / "mcore"
    size = [] if run.tiny else WIDER
    step, _ = run.child("make-tiny", hy3("make-tiny", hf, "--no-tokenizer", *size), "make-tiny")
    if step["status"] == "passed":
        step, _ = run.child("convert", hy3("convert", "hf-to-mcore", hf, mcore, "--quiet"), "convert")
    for name, dtype, from_mcore in PARITY_TINY if run.tiny else PARITY:
        if not hf.exists() or (from_mcore and not mcore.exists()):
            run.record(name, "not run", reason="its checkpoint was not made")
            continue
        # 128 positions on a GPU: bf16's top-1 agreement is judged over them (docs/megatron.md, the bf16 bound)
        cmd = hy3("verify", "parity", hf, "--device", device, "--layers", layers, "--dtype", dtype, "--json",
                  *(["--mcore", mcore] if from_mcore else []), *([] if run.tiny else ["--tokens", "64"]))
        step, out = run.child(name, cmd, "parity")
        try:
            result = json.loads(out)
        except json.JSONDecodeError:
            result = None
        if isinstance(result, dict):
            step["results"] = result
        if step["status"] == "passed" and not (isinstance(result, dict) and result.get("passed") is True):
            step["status"] = "failed"
            step["reason"] = "its JSON does not say \"passed\": true"


def verdict(steps: list[dict], on_gpu: bool) -> tuple[int, str]:
    failed = [s["step"] for s in steps if s["status"] == "failed"]
    missing = [s["step"] for s in steps if s["status"] in ("skipped", "not run")]
    if failed:
        return 1, f"FAILED: {', '.join(failed)}"
    if missing and on_gpu:
        return 2, f"INCOMPLETE: {', '.join(missing)} skipped or not run"
    if missing:
        return 0, f"passed, with {', '.join(missing)} skipped (allowed off a GPU)"
    return 0, f"all {len(steps)} steps passed"


def summary(steps: list[dict], header: str, text: str, report: Path) -> str:
    lines = [header, f"{'step':<26} {'status':<8} {'seconds':>8}  result"]
    for s in steps:
        result = s.get("summary") or s.get("reason") or ""
        if s["step"] == "environment":
            v = s.get("versions", {})
            result = (f"{s.get('gpu') or 'no GPU'}; torch {v.get('torch')}, megatron-core {v.get('megatron-core')}, "
                      f"transformer-engine {v.get('transformer-engine') or 'absent'}")
        elif s["step"].startswith("parity") and isinstance(s.get("results"), dict):
            r = s["results"]
            result = ", ".join(f"{k} {v:.2g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                               if isinstance(v, (int, float, bool)))[:120]
        lines.append(f"{s['step']:<26} {s['status']:<8} {s['seconds']:8.1f}  {result}")
        for extra in s.get("skipped_settings", []):
            lines.append(f"{'':<45}skipped {extra}")
    lines += [f"verdict: {text}", f"report: {report}"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run every GPU check of megatron-hy on one H100/H200 (about 4 minutes, "
                                            "at most --budget seconds) with this Python's CUDA torch and "
                                            "megatron-core; print a summary and write a JSON report.")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                   help="cuda, or cpu for the CPU halves (default: cuda when a GPU is present)")
    p.add_argument("--tiny", action="store_true", help="tiny widths everywhere (the default on a CPU)")
    p.add_argument("--report", default=str(REPO / "bench-out" / "gpu-check.json"),
                   help="JSON report (default bench-out/gpu-check.json)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all GPU steps (default {BUDGET_S})")
    p.add_argument("--layers", default="0,1", help="decoder layers the parity step loads (default 0,1: the dense "
                                                   "layer and the first MoE layer)")
    p.add_argument("--work", help="directory for the steps' logs, JSON and checkpoints (default: a new directory "
                                  "beside the report)")
    p.add_argument("--keep", action="store_true", help="keep the checkpoints the parity steps used")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    on_gpu = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = "cuda" if on_gpu else "cpu"
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=args.work or report.parent))
    run = Run(args.budget, work, args.tiny or not on_gpu)
    print(f"[gpu-check] device {device}, {'tiny' if run.tiny else 'real'} widths, budget "
          f"{'none (tiny)' if run.tiny else f'{args.budget:.0f} s'}, work directory {work}", file=sys.stderr)
    env = environment(run, on_gpu)
    if env["status"] == "passed":
        moe_layer(run, device)
        stage(run, device)
        checkpoints_and_parity(run, device, args.layers)
    code, text = verdict(run.steps, on_gpu)
    elapsed = time.monotonic() - run.t0
    header = f"gpu-check on {env.get('gpu') or device}: {elapsed:.0f} s" + ("" if run.tiny else f" of {args.budget:.0f}")
    if not args.keep:
        shutil.rmtree(work / "hf", ignore_errors=True)
        shutil.rmtree(work / "mcore", ignore_errors=True)
    tmp = report.with_name(report.name + ".partial")
    tmp.write_text(json.dumps({"device": device, "tiny": run.tiny, "budget_s": args.budget,
                               "seconds": round(elapsed, 1), "exit_status": code, "verdict": text,
                               "work_dir": str(work), "steps": run.steps}, indent=1))
    tmp.replace(report)
    print(summary(run.steps, header, text, report))
    return code


if __name__ == "__main__":
    sys.exit(main())
