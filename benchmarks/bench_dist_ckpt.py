"""Benchmark `hy3 convert hf-to-mcore` and `mcore-to-hf` against `cp -r` of the same bytes, in one run.

    .venv/bin/python benchmarks/bench_dist_ckpt.py      # what docs/benchmarks.md records

Builds the synthetic Hy3 at real widths that bench_layout.py uses (_synthetic.py; about 10.3 GB: 64 experts,
3 layers + MTP), then per repeat times, each as a child process followed by `sync` with the page cache dropped before
it when permitted: `cp -r` of the HF checkpoint, `hy3 convert hf-to-mcore` of it, `cp -r` of the
torch_dist checkpoint it wrote, and `hy3 convert mcore-to-hf` of that. Each direction is compared with the
`cp -r` of its own input. Peak RSS is the child's VmHWM. Writes docs/benchmarks.md (section
"HF <-> torch_dist") and prints JSON.
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

from _common import DOC, GB, against, hy3, log_run, machine, method, publish, remove, timed
from _synthetic import add_synthetic_args, synthetic_config, write_synthetic

START, END = "<!-- bench_dist_ckpt: start -->", "<!-- bench_dist_ckpt: end -->"


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hy3-bench-dist-"))
    work.mkdir(parents=True, exist_ok=True)
    hf, mc, back, copy = work / "hf", work / "mcore", work / "hf-again", work / "copy"
    cfg = synthetic_config(args.experts, args.layers, args.dense_layers, args.mtp)
    runs = {"cp_hf": [], "hf_to_mcore": [], "cp_mcore": [], "mcore_to_hf": []}
    sizes = {}
    try:
        t = time.perf_counter()
        built = write_synthetic(hf, cfg, args.shards)
        os.sync()
        print(f"built {built['bytes'] / GB:.2f} GB in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        for r in range(args.repeats):
            steps = [("cp_hf", ["cp", "-r", str(hf), str(copy)], copy),
                     ("hf_to_mcore", hy3("convert", "hf-to-mcore", hf, mc, "--quiet", "--workers", args.workers), None),
                     ("cp_mcore", ["cp", "-r", str(mc), str(copy)], copy),
                     ("mcore_to_hf", hy3("convert", "mcore-to-hf", mc, back, "--hf-config", hf, "--quiet",
                                         "--workers", args.workers), back)]
            for name, cmd, out in steps:
                res = timed(cmd, cold=not args.warm)
                runs[name].append(res)
                log_run(r, name, res)
                if name == "hf_to_mcore":
                    sizes["mcore"] = du(mc)
                if name == "mcore_to_hf":
                    sizes["hf_again"] = du(back)
                if out is not None:
                    remove(out)
            remove(mc)
        sizes["hf"] = du(hf)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(args, cfg, built, runs, sizes)


def summarize(args, cfg, built, runs, sizes) -> dict:
    res = {"checkpoint": {"hf_bytes": sizes["hf"], "torch_dist_bytes": sizes["mcore"], "tensors": built["tensors"],
                          "experts": cfg.num_experts, "layers": cfg.num_layers, "mtp_layers": cfg.num_mtp_layers,
                          "hidden": cfg.hidden_size, "expert_ffn": cfg.moe_ffn, "vocab": cfg.vocab_size},
           "machine": machine(),
           "method": method(args, runs, "bench_dist_ckpt.py", "not dropped (warm or not permitted)"),
           "runs": runs}
    for name, base in (("hf_to_mcore", "cp_hf"), ("mcore_to_hf", "cp_mcore")):
        res[name] = against(runs, name, base)
    return res


def markdown(res: dict) -> str:
    c = res["checkpoint"]
    lines = ["## HF <-> torch_dist", "",
             f"Synthetic Hy3 at real widths (hidden {c['hidden']}, expert FFN {c['expert_ffn']}, vocab {c['vocab']}), "
             f"{c['experts']} experts, {c['layers']} layers + {c['mtp_layers']} MTP layer: {c['hf_bytes'] / GB:.2f} GB "
             f"of HF safetensors ({c['tensors']} tensors); the torch_dist checkpoint is {c['torch_dist_bytes'] / GB:.2f} GB. "
             f"{res['machine']['cpus']} CPUs. Each direction is compared with `cp -r` of its own input, timed in the same "
             f"repeat; {res['method']['statistic']} of {res['method']['repeats']} repeats; page cache "
             f"{res['method']['page_cache']}; `--workers {res['method']['workers']}`. Produced by "
             f"`{res['method']['command']}`.", "",
             "| direction | seconds | `cp -r` of its input | ratio | peak RSS |", "|---|---:|---:|---:|---:|"]
    for name, label in (("hf_to_mcore", "`hy3 convert hf-to-mcore`"), ("mcore_to_hf", "`hy3 convert mcore-to-hf`")):
        r = res[name]
        lines.append(f"| {label} | {r['seconds']:.1f} | {r['cp_seconds']:.1f} | {r['ratio_to_cp']:.2f}x | "
                     f"{r['peak_rss_bytes'] / 2**20:.0f} MiB |")
    for name in ("hf_to_mcore", "mcore_to_hf"):
        lines += ["", f"{name.replace('_', '-')} / `cp -r` within each repeat: "
                      + ", ".join(f"{x:.2f}" for x in res[name]["ratio_to_cp_same_repeat"]) + "."]
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
