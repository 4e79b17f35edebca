"""Benchmark `hy3 convert inner-to-outer` (and back) against `cp -r` of the same checkpoint, in one run.

    .venv/bin/python benchmarks/bench_layout.py --reverse    # what docs/benchmarks.md records

Builds a synthetic Hy3 at real widths (about 10.3 GB with 64 experts, 3 layers + MTP, 7 shards),
then times `cp -r` of it and the converter, each as a child process followed by `sync` (so no run
leaves its writeback to the next). Before every timed run the page cache is dropped when this user
may (`/proc/sys/vm/drop_caches`), so each run reads from disk; the order alternates between repeats
and the medians are compared. Peak RSS is the child's own high-water mark (VmHWM in /proc).
Writes the results into docs/benchmarks.md (section "inner <-> outer") and prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DOC, GB, against, hy3, log_run, machine, median_seconds, method, publish, remove, timed
from _synthetic import add_synthetic_args, synthetic_config, write_synthetic

START, END = "<!-- bench_layout: start -->", "<!-- bench_layout: end -->"


def run(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hy3-bench-layout-"))
    work.mkdir(parents=True, exist_ok=True)
    src, outer, back, copy = work / "inner", work / "outer", work / "inner-again", work / "copy"
    cfg = synthetic_config(args.experts, args.layers, args.dense_layers, args.mtp)
    try:
        t = time.perf_counter()
        built = write_synthetic(src, cfg, args.shards,
                                on_shard=lambda n, b: print(f"  built {n} ({b / GB:.2f} GB)", file=sys.stderr))
        os.sync()
        print(f"built {built['bytes'] / GB:.2f} GB in {time.perf_counter() - t:.0f}s: {built}", file=sys.stderr)

        jobs = {"cp": (["cp", "-r", str(src), str(copy)], copy),
                "inner_to_outer": (hy3("convert", "inner-to-outer", src, outer, "--quiet", "--workers", args.workers), outer),
                "outer_to_inner": (hy3("convert", "outer-to-inner", outer, back, "--quiet", "--workers", args.workers), back)}
        runs = {name: [] for name in jobs}
        checks = {}
        for r in range(args.repeats):
            order = ["cp", "inner_to_outer"] if r % 2 == 0 else ["inner_to_outer", "cp"]
            for name in order + (["outer_to_inner"] if args.reverse else []):
                cmd, out = jobs[name]
                res = timed(cmd, cold=not args.warm)
                runs[name].append(res)
                if r == 0 and name != "cp":  # untimed: the output is a clean checkpoint
                    checks[name] = subprocess.run(hy3("check", out, "--spot-check", "1"), capture_output=True).returncode == 0
                log_run(r, name, res)
                if not (name == "inner_to_outer" and args.reverse):  # outer-to-inner reads it next
                    remove(out)
            remove(outer)
        checks["input"] = subprocess.run(hy3("check", src, "--spot-check", "1"), capture_output=True).returncode == 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(args, cfg, built, runs, checks)


def summarize(args, cfg, built: dict, runs: dict, checks: dict) -> dict:
    result = {
        "checkpoint": {"bytes": built["bytes"], "tensors": built["tensors"], "shards": built["shards"],
                       "experts": cfg.num_experts, "layers": cfg.num_layers, "mtp_layers": cfg.num_mtp_layers,
                       "hidden": cfg.hidden_size, "expert_ffn": cfg.moe_ffn, "vocab": cfg.vocab_size,
                       "straddling_layers": built["straddling_layers"]},
        "passes_hy3_check": checks,
        "machine": machine(),
        "method": method(args, runs, "bench_layout.py", "not dropped (warm or not permitted); order alternated"),
        "cp_seconds": median_seconds(runs["cp"]),
        "runs": runs,
    }
    for name in ("inner_to_outer", "outer_to_inner"):
        if runs[name]:
            result[name] = {**against(runs, name, "cp"), "gb_per_s": built["bytes"] / GB / median_seconds(runs[name])}
    return result


def markdown(res: dict) -> str:
    c = res["checkpoint"]
    loads = [r["load_average"] for v in res["runs"].values() for r in v]
    load = (min(loads), max(loads))
    rows = [("`cp -r`", res["cp_seconds"], 1.0, max(r["peak_rss_bytes"] for r in res["runs"]["cp"]))]
    for name, label in (("inner_to_outer", "`hy3 convert inner-to-outer`"), ("outer_to_inner", "`hy3 convert outer-to-inner`")):
        if name in res:
            rows.append((label, res[name]["seconds"], res[name]["ratio_to_cp"], res[name]["peak_rss_bytes"]))
    lines = [
        "## inner <-> outer",
        "",
        f"Synthetic Hy3 at real widths (hidden {c['hidden']}, expert FFN {c['expert_ffn']}, vocab {c['vocab']}), "
        f"{c['experts']} experts, {c['layers']} layers + {c['mtp_layers']} MTP layer: {c['bytes'] / GB:.2f} GB in "
        f"{c['tensors']} tensors and {c['shards']} shards (experts of layers {c['straddling_layers']} straddle shard "
        f"files). {res['machine']['cpus']} CPUs, kernel {res['machine']['kernel']}. Each time is the {res['method']['statistic']} "
        f"of {res['method']['repeats']} runs of the command plus `sync`; page cache {res['method']['page_cache']}; "
        f"converter `--workers {res['method']['workers']}`; 1-minute load average {load[0]:.1f} to {load[1]:.1f} "
        "(other work on the machine makes single runs vary). Produced by "
        f"`{res['method']['command']}`.",
        "",
        "| command | seconds | vs `cp -r` | GB/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, sec, ratio, rss in rows:
        lines.append(f"| {label} | {sec:.1f} | {ratio:.2f}x | {c['bytes'] / GB / sec:.2f} | {rss / 2**20:.0f} MiB |")
    for name in ("inner_to_outer", "outer_to_inner"):
        if name in res:
            ratios = ", ".join(f"{x:.2f}" for x in res[name]["ratio_to_cp_same_repeat"])
            lines += ["", f"{name.replace('_', '-')} / `cp -r` within each repeat: {ratios}."]
    lines += ["", "Targets: at most 1.2x the `cp -r` time and at most 1 GiB peak RSS.", "",
              "<details><summary>raw results (JSON)</summary>", "", "```json", compact_json(res), "```", "",
              "</details>"]
    return "\n".join(lines)


def compact_json(res: dict) -> str:
    """Valid JSON, one line per top-level entry and per timed run."""
    def runs(v):
        return "{\n" + ",\n".join(f"  {json.dumps(name)}: [\n" + ",\n".join(f"   {json.dumps(r)}" for r in rs) + "\n  ]"
                                    for name, rs in v.items()) + "\n }"
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {runs(v) if k == 'runs' else json.dumps(v)}"
                                for k, v in res.items()) + "\n}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_synthetic_args(p, repeats=5, workers=8, doc=str(DOC))
    p.add_argument("--reverse", action="store_true", help="also time outer-to-inner")
    args = p.parse_args()
    res = run(args)
    publish(res, {k: v for k, v in res.items() if k != "runs"}, args.doc, markdown(res), START, END)


if __name__ == "__main__":
    main()
