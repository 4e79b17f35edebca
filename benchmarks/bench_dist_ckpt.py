"""Benchmark `hy3 convert hf-to-mcore` and `mcore-to-hf` against copying the same bytes, in one run.

    .venv/bin/python benchmarks/bench_dist_ckpt.py      # what docs/benchmarks.md records

Builds the synthetic Hy3 at real widths that bench_layout.py uses (_synthetic.py; about 10.3 GB: 64 experts,
3 layers + MTP), then per repeat times, each as child processes followed by `sync` with the page cache dropped
before it when permitted: `cp -r` of the HF checkpoint, the same files copied by N `cp` processes at once
(N = the converter's --workers), `hy3 convert hf-to-mcore` of it (those three in rotating order), then the same
two copies of the torch_dist checkpoint it wrote and `hy3 convert mcore-to-hf` of that. Each direction is
compared with the copies of its own input. After mcore-to-hf, untimed, every tensor of its output is hashed and
compared with the input HF checkpoint's; any difference fails the run. Peak RSS is the child's VmHWM. Writes
docs/benchmarks.md (section "HF <-> torch_dist") and prints JSON.
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

from _common import (DOC, GB, against, hy3, log_run, machine, method, parallel_cp, publish, remove, tensor_digests,
                     timed, timed_together, verify)
from _synthetic import add_synthetic_args, synthetic_config, write_synthetic

START, END = "<!-- bench_dist_ckpt: start -->", "<!-- bench_dist_ckpt: end -->"
BASES = {"hf_to_mcore": ["cp_hf", "cp_hf_parallel"], "mcore_to_hf": ["cp_mcore", "cp_mcore_parallel"]}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hy3-bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    hf, mc, back, copy = work / "hf", work / "mcore", work / "hf-again", work / "copy"
    cfg = synthetic_config(args.experts, args.layers, args.dense_layers, args.mtp)
    runs = {name: [] for name in ["cp_hf", "cp_hf_parallel", "hf_to_mcore", "cp_mcore", "cp_mcore_parallel", "mcore_to_hf"]}
    sizes, verified = {}, []
    try:
        t = time.perf_counter()
        built = write_synthetic(hf, cfg, args.shards)
        os.sync()
        print(f"built {built['bytes'] / GB:.2f} GB in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        expected = tensor_digests(hf)
        machine_info = machine(work)
        convert = {"hf_to_mcore": hy3("convert", "hf-to-mcore", hf, mc, "--quiet", "--workers", args.workers),
                   "mcore_to_hf": hy3("convert", "mcore-to-hf", mc, back, "--hf-config", hf, "--quiet",
                                      "--workers", args.workers)}
        for r in range(args.repeats):
            for name, (cp, cp_parallel) in BASES.items():
                src = hf if name == "hf_to_mcore" else mc
                steps = [cp, cp_parallel, name]
                for step in steps[r % 3:] + steps[:r % 3]:  # rotated between repeats
                    if step == cp:
                        res = timed(["cp", "-r", str(src), str(copy)], cold=not args.warm)
                    elif step == cp_parallel:
                        res = timed_together(parallel_cp(src, copy, args.workers), cold=not args.warm, cwd=src)
                    else:
                        res = timed(convert[step], cold=not args.warm)
                    runs[step].append(res)
                    log_run(r, step, res)
                    remove(copy)
            sizes["mcore"] = du(mc)
            verified.append(verify(expected, back, "hf_to_mcore + mcore_to_hf"))  # untimed
            remove(back)
            remove(mc)
        sizes["hf"] = du(hf)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(args, cfg, built, runs, sizes, verified, machine_info)


def summarize(args, cfg, built, runs, sizes, verified, machine_info) -> dict:
    res = {"checkpoint": {"hf_bytes": sizes["hf"], "torch_dist_bytes": sizes["mcore"], "tensors": built["tensors"],
                          "experts": cfg.num_experts, "layers": cfg.num_layers, "mtp_layers": cfg.num_mtp_layers,
                          "hidden": cfg.hidden_size, "expert_ffn": cfg.moe_ffn, "vocab": cfg.vocab_size},
           "verified_tensors": verified,
           "cp_parallel_processes": {b: runs[b][0]["processes"] for b in ("cp_hf_parallel", "cp_mcore_parallel")},
           "machine": machine_info,
           "method": method(args, runs, "bench_dist_ckpt.py", "not dropped (warm or not permitted)"),
           "runs": runs}
    for name, bases in BASES.items():
        res[name] = against(runs, name, bases)
    return res


def markdown(res: dict) -> str:
    c, m, fs = res["checkpoint"], res["machine"], res["machine"]["filesystem"]
    n = res["cp_parallel_processes"]
    loads = [r["load_average"] for v in res["runs"].values() for r in v]
    lines = ["## HF <-> torch_dist", "",
             f"Synthetic Hy3 at real widths (hidden {c['hidden']}, expert FFN {c['expert_ffn']}, vocab {c['vocab']}), "
             f"{c['experts']} experts, {c['layers']} layers + {c['mtp_layers']} MTP layer: {c['hf_bytes'] / GB:.2f} GB "
             f"of HF safetensors ({c['tensors']} tensors); the torch_dist checkpoint is {c['torch_dist_bytes'] / GB:.2f} GB. "
             f"{m['cpus']} CPUs, kernel {m['kernel']}, {fs['type']} on {fs['device']} (mounted at {fs['mount']}). "
             f"Each direction is compared with two copies of its own input timed in the same repeat: `cp -r`, and the "
             f"same files copied by N `cp` processes started together (N = `--workers`, at most one per file: "
             f"{n['cp_hf_parallel']} for the HF checkpoint, {n['cp_mcore_parallel']} for the torch_dist one; files "
             f"dealt out by size; their peak RSS is not shown). "
             f"{res['method']['statistic'].capitalize()} of {res['method']['repeats']} repeats; page cache "
             f"{res['method']['page_cache']}; `--workers {res['method']['workers']}`; 1-minute load average "
             f"{min(loads):.1f} to {max(loads):.1f} (other work on the machine makes single runs vary). After every repeat, untimed, each "
             f"tensor of the HF checkpoint that came back (HF -> torch_dist -> HF) was hashed (xxh3-128) and equal to "
             f"the input's, byte for byte ({res['verified_tensors'][0]} tensors). Produced by "
             f"`{res['method']['command']}`.", "",
             "| direction | seconds | `cp -r` of its input | N `cp` of its input | vs `cp -r` | vs N `cp` | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, (cp, par) in BASES.items():
        r = res[name]
        lines.append(f"| `hy3 convert {name.replace('_', '-')}` | {r['seconds']:.1f} | {r[cp + '_seconds']:.1f} | "
                     f"{r[par + '_seconds']:.1f} | {r['ratio_to_' + cp]:.2f}x | {r['ratio_to_' + par]:.2f}x | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} MiB |")
    for name, bases in BASES.items():
        for base, label in zip(bases, ("`cp -r`", "N `cp`")):
            lines += ["", f"{name.replace('_', '-')} / {label} within each repeat: "
                          + ", ".join(f"{x:.2f}" for x in res[name][f"ratio_to_{base}_same_repeat"]) + "."]
    lines += ["", "Targets: at most 1.5x `cp -r` and at most 2 GiB peak RSS.", "",
              "<details><summary>raw results (JSON)</summary>", "", "```json", json.dumps(res, indent=1), "```", "",
              "</details>"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_synthetic_args(p, repeats=3, workers=4, doc=str(DOC))
    args = p.parse_args()
    res = run(args)
    publish(res, {k: v for k, v in res.items() if k != "runs"}, args.doc, markdown(res), START, END)


if __name__ == "__main__":
    main()
