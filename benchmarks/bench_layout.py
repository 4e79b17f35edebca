"""Benchmark `hy3 convert inner-to-outer` (and back) against copying the same checkpoint, in one run.

    .venv/bin/python benchmarks/bench_layout.py --reverse    # what docs/benchmarks.md records

Builds a synthetic Hy3 at real widths (about 10.3 GB with 64 experts, 3 layers + MTP, 7 shards),
then times two baselines and the converter, each as child processes followed by `sync` (so no run
leaves its writeback to the next): `cp -r` of the checkpoint, and the same files copied by N `cp`
processes at once (N = the converter's --workers; a fairer floor where one `cp` is CPU-bound). Before
every timed run the page cache is dropped when this user may (`/proc/sys/vm/drop_caches`), so each run
reads from disk; the order rotates between repeats and the medians are compared. Peak RSS is the
child's own high-water mark (VmHWM in /proc). After each conversion, untimed, every tensor of its
output is hashed and compared with the input's; any difference fails the run. Writes the results into
docs/benchmarks.md (section "inner <-> outer") and prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import (DOC, GB, against, hy3, log_run, machine, median_seconds, method, parallel_cp, publish, remove,
                     tensor_digests, timed, timed_together, verify)
from _synthetic import add_synthetic_args, synthetic_config, write_synthetic

START, END = "<!-- bench_layout: start -->", "<!-- bench_layout: end -->"
BASELINES = ["cp", "cp_parallel"]


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
        expected = tensor_digests(src)
        machine_info = machine(work)

        converters = {"inner_to_outer": (hy3("convert", "inner-to-outer", src, outer, "--quiet", "--workers", args.workers), outer),
                      "outer_to_inner": (hy3("convert", "outer-to-inner", outer, back, "--quiet", "--workers", args.workers), back)}
        runs = {name: [] for name in BASELINES + list(converters)}
        verified = {name: [] for name in converters}

        def record(r: int, name: str, res: dict) -> None:
            runs[name].append(res)
            log_run(r, name, res)

        for r in range(args.repeats):
            steps = BASELINES + ["convert"]
            for step in steps[r % 3:] + steps[:r % 3]:  # rotated between repeats
                if step == "cp":
                    record(r, step, timed(["cp", "-r", str(src), str(copy)], cold=not args.warm))
                elif step == "cp_parallel":
                    record(r, step, timed_together(parallel_cp(src, copy, args.workers), cold=not args.warm, cwd=src))
                else:
                    for name in ["inner_to_outer"] + (["outer_to_inner"] if args.reverse else []):
                        cmd, out = converters[name]
                        record(r, name, timed(cmd, cold=not args.warm))
                        verified[name].append(verify(expected, out, name))  # untimed
                for path in (copy, back, outer):
                    remove(path)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(args, cfg, built, runs, verified, machine_info)


def summarize(args, cfg, built: dict, runs: dict, verified: dict, machine_info: dict) -> dict:
    result = {
        "checkpoint": {"bytes": built["bytes"], "tensors": built["tensors"], "shards": built["shards"],
                       "experts": cfg.num_experts, "layers": cfg.num_layers, "mtp_layers": cfg.num_mtp_layers,
                       "hidden": cfg.hidden_size, "expert_ffn": cfg.moe_ffn, "vocab": cfg.vocab_size,
                       "straddling_layers": built["straddling_layers"]},
        "verified_tensors": {k: v for k, v in verified.items() if v},
        "machine": machine_info,
        "method": method(args, runs, "bench_layout.py", "not dropped (warm or not permitted); order rotated"),
        "cp_seconds": median_seconds(runs["cp"]),
        "cp_parallel_seconds": median_seconds(runs["cp_parallel"]),
        "cp_parallel_processes": runs["cp_parallel"][0]["processes"],
        "runs": runs,
    }
    for name in ("inner_to_outer", "outer_to_inner"):
        if runs[name]:
            result[name] = {**against(runs, name, BASELINES), "gb_per_s": built["bytes"] / GB / median_seconds(runs[name])}
    return result


def markdown(res: dict) -> str:
    c, m = res["checkpoint"], res["machine"]
    loads = [r["load_average"] for v in res["runs"].values() for r in v]
    n = res["cp_parallel_processes"]
    rss = {k: max(r["peak_rss_bytes"] for r in v) for k, v in res["runs"].items() if v}
    rows = [("`cp -r`", res["cp_seconds"], rss["cp"]), (f"{n} `cp` processes at once", res["cp_parallel_seconds"], rss["cp_parallel"])]
    for name in ("inner_to_outer", "outer_to_inner"):
        if name in res:
            rows.append((f"`hy3 convert {name.replace('_', '-')}`", res[name]["seconds"], rss[name]))
    fs = m["filesystem"]
    lines = [
        "## inner <-> outer",
        "",
        f"Synthetic Hy3 at real widths (hidden {c['hidden']}, expert FFN {c['expert_ffn']}, vocab {c['vocab']}), "
        f"{c['experts']} experts, {c['layers']} layers + {c['mtp_layers']} MTP layer: {c['bytes'] / GB:.2f} GB in "
        f"{c['tensors']} tensors and {c['shards']} shards (experts of layers {c['straddling_layers']} straddle shard "
        f"files). {m['cpus']} CPUs, kernel {m['kernel']}, {fs['type']} on {fs['device']} (mounted at {fs['mount']}). "
        f"Each time is the {res['method']['statistic']} of {res['method']['repeats']} runs of the command plus `sync`; "
        f"page cache {res['method']['page_cache']}; converter `--workers {res['method']['workers']}`; the second "
        f"baseline copies the same files with {n} `cp` processes started together (files dealt out by size; "
        f"its peak RSS is the sum of theirs), the floor for {n} streams; 1-minute load average {min(loads):.1f} to {max(loads):.1f} (other work on the "
        f"machine makes single runs vary). Every output was checked after its run, untimed: each of its "
        f"tensors hashed (xxh3-128) and equal to the input's, byte for byte. Produced by `{res['method']['command']}`.",
        "",
        f"| command | seconds | vs `cp -r` | vs {n} `cp` | GB/s | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, sec, peak in rows:
        lines.append(f"| {label} | {sec:.1f} | {sec / res['cp_seconds']:.2f}x | {sec / res['cp_parallel_seconds']:.2f}x | "
                     f"{c['bytes'] / GB / sec:.2f} | {peak / 2**20:.0f} MiB |")
    for name in ("inner_to_outer", "outer_to_inner"):
        if name in res:
            for base, label in (("cp", "`cp -r`"), ("cp_parallel", f"{n} `cp`")):
                ratios = ", ".join(f"{x:.2f}" for x in res[name][f"ratio_to_{base}_same_repeat"])
                lines += ["", f"{name.replace('_', '-')} / {label} within each repeat: {ratios}."]
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
