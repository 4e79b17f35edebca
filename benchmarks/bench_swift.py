"""Benchmark `hy3 convert hf-to-mcore` against the peer: mcore-bridge building the model and loading the HF
weights (`bridge.load_weights`) and ms-swift saving torch_dist (`save_mcore_checkpoint`), what
`megatron export --to_mcore` does, on the same input in the same run.

    .venv/bin/python benchmarks/bench_swift.py      # what docs/benchmarks.md records

Builds a synthetic Hy3 at real-ish widths (hidden 2048, 16 heads of 128 / 4 KV heads, expert FFN 1536, dense
FFN 6656, vocab 32768; 12 experts, 3 layers + MTP: about 1.2 GB of bf16), then per repeat times each side as
a child process (wall time including `sync`, peak RSS = the child's VmHWM), alternating which goes first,
with the page cache dropped before each when permitted. Their side runs ms-swift's and mcore-bridge's own
code on the CPU through the tests' transformer_engine stand-in and CUDA shims (tests/swift_harness.py), with
the Hy3 plugin, world size 1. Afterwards (untimed) both outputs are read back and every tensor compared.
Writes docs/benchmarks.md (section "HF -> torch_dist against mcore-bridge + ms-swift") and prints JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import hy3, remove, timed, write_doc
from _synthetic import BUNDLED, write_synthetic

REPO = Path(__file__).resolve().parent.parent

GB = 1e9
START, END = "<!-- bench_swift: start -->", "<!-- bench_swift: end -->"
TESTS = REPO / "tests"


def bench_config(experts: int, layers: int, dense_layers: int, mtp: int):
    from megatron_hy.config import load_config

    real = load_config(BUNDLED)
    return dataclasses.replace(real, hidden_size=2048, num_heads=16, num_kv_heads=4, head_dim=128,
                               intermediate_size=6656, vocab_size=32768, num_layers=layers, num_experts=experts,
                               top_k=min(real.top_k, experts), num_mtp_layers=mtp,
                               layer_types=tuple(["dense"] * dense_layers + ["sparse"] * (layers - dense_layers)))


# --- their side, in a child process --------------------------------------------------------------------

def theirs_child(hf: str, out: str) -> None:
    """mcore-bridge build + load_weights + ms-swift save_mcore_checkpoint (world size 1, gloo)."""
    sys.path[:0] = [str(TESTS / "te_standin"), str(TESTS)]
    import swift_harness

    swift_harness.setup()
    import torch
    import torch.distributed as dist

    from megatron_hy.megatron.harness import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    import swift.megatron  # noqa: F401
    from swift.megatron.init import _patch_mcore_bridge
    from swift.megatron.utils.megatron_lm_utils import _initialize_mpu, save_mcore_checkpoint
    from swift.utils import import_external_file

    from megatron_hy.swift.plugin import swift_plugin_path
    import swift_jobs

    import_external_file(str(swift_plugin_path()))
    _patch_mcore_bridge()
    args = swift_jobs.swift_args(torch_dtype=torch.bfloat16, output_dir=out)
    _initialize_mpu(args)
    model = swift_jobs.build(args, hf)
    model.config.bridge.load_weights([model], hf)
    save_mcore_checkpoint(args, [model], iteration=1, output_dir=out)
    dist.destroy_process_group()


def theirs_cmd(hf: Path, out: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", str(hf), str(out)]


# --- checking the outputs (untimed) --------------------------------------------------------------------

def compare(a: Path, b: Path) -> dict:
    """Every tensor of two torch_dist checkpoints (each read whole through torch's DCP loader, which
    megatron-core's checkpoints need: they carry no planner data for partial loads) and their byte objects."""
    import warnings

    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    warnings.filterwarnings("ignore")

    def read(root):
        it = str(root / "iter_0000001")
        meta = FileSystemReader(it).read_metadata().state_dict_metadata
        return meta, _load_state_dict_from_keys(set(meta), checkpoint_id=it)

    (ma, va), (mb, vb) = read(a), read(b)
    objects = {k for k, v in ma.items() if isinstance(v, BytesStorageMetadata)}
    same_objects = objects == {k for k, v in mb.items() if isinstance(v, BytesStorageMetadata)}
    bad = []
    for k in sorted(set(ma) - objects):
        x, y = va[k], vb.get(k)
        if y is None or x.dtype != y.dtype or x.shape != y.shape or not torch.equal(
                x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            bad.append(k)
    for k in sorted(objects & set(mb)):
        x, y = va[k], vb[k]
        if not (len(x) == len(y) == 1 and torch.equal(x[0], y[0]) and x[0].dtype == y[0].dtype):
            bad.append(k)
    return {"same_keys": sorted(ma) == sorted(mb), "tensors": len(ma) - len(objects), "objects": len(objects),
            "same_objects": same_objects, "mismatched": bad}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- the run ---------------------------------------------------------------------------------------------

def run(args) -> dict:
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hy3-bench-swift-"))
    work.mkdir(parents=True, exist_ok=True)
    hf, ours_out, theirs_out = work / "hf", work / "ours", work / "theirs"
    cfg = bench_config(args.experts, args.layers, args.dense_layers, args.mtp)
    runs = {"ours": [], "theirs": []}
    try:
        t = time.perf_counter()
        built = write_synthetic(hf, cfg, args.shards)
        os.sync()
        print(f"built {built['bytes'] / GB:.2f} GB in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        jobs = {"ours": (hy3("convert", "hf-to-mcore", hf, ours_out, "--quiet", "--workers", args.workers), ours_out),
                "theirs": (theirs_cmd(hf, theirs_out), theirs_out)}
        check = None
        for r in range(args.repeats):
            for name in (["ours", "theirs"] if r % 2 == 0 else ["theirs", "ours"]):
                cmd, out = jobs[name]
                remove(out)
                res = timed(cmd, cold=not args.warm)
                runs[name].append(res)
                print(f"  run {r + 1} {name}: {res['seconds']:.1f}s, peak RSS {res['peak_rss_bytes'] / 2**20:.0f} MiB, "
                      f"load {res['load_average']:.2f}", file=sys.stderr)
            if check is None:
                check = compare(ours_out, theirs_out)
                check["ours_bytes"], check["theirs_bytes"] = du(ours_out), du(theirs_out)
                print(f"  outputs: {check['tensors']} tensors, {len(check['mismatched'])} mismatched, "
                      f"same keys {check['same_keys']}, same objects {check['same_objects']}", file=sys.stderr)
        hf_bytes = du(hf)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(args, cfg, built, hf_bytes, runs, check)


def summarize(args, cfg, built, hf_bytes, runs, check) -> dict:
    def med(name, key="seconds"):
        return statistics.median(r[key] for r in runs[name])

    ours, theirs = med("ours"), med("theirs")
    rss_o, rss_t = max(r["peak_rss_bytes"] for r in runs["ours"]), max(r["peak_rss_bytes"] for r in runs["theirs"])
    return {
        "checkpoint": {"hf_bytes": hf_bytes, "tensors": built["tensors"], "experts": cfg.num_experts,
                       "layers": cfg.num_layers, "mtp_layers": cfg.num_mtp_layers, "hidden": cfg.hidden_size,
                       "expert_ffn": cfg.moe_ffn, "vocab": cfg.vocab_size},
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "load_average_at_start": [round(r["load_average"], 2) for v in runs.values() for r in v]},
        "method": {"repeats": args.repeats, "workers": args.workers, "statistic": "median",
                   "page_cache": "dropped before each run" if all(r["cache_dropped"] for v in runs.values() for r in v)
                   else "not dropped (warm or not permitted)",
                   "command": " ".join(["benchmarks/bench_swift.py"] + sys.argv[1:])},
        "ours": {"seconds": ours, "peak_rss_bytes": rss_o},
        "theirs": {"seconds": theirs, "peak_rss_bytes": rss_t},
        "time_ratio": ours / theirs, "memory_ratio": rss_o / rss_t,
        "time_ratio_same_repeat": [round(a["seconds"] / b["seconds"], 3) for a, b in zip(runs["ours"], runs["theirs"])],
        "outputs": check, "runs": runs,
    }


def markdown(res: dict) -> str:
    c, o, t = res["checkpoint"], res["ours"], res["theirs"]
    chk = res["outputs"]
    verdict = "equal" if chk["same_keys"] and chk["same_objects"] and not chk["mismatched"] else "DIFFERENT"
    lines = [
        "## HF -> torch_dist against mcore-bridge + ms-swift", "",
        f"Synthetic Hy3 at real-ish widths (hidden {c['hidden']}, expert FFN {c['expert_ffn']}, vocab {c['vocab']}), "
        f"{c['experts']} experts, {c['layers']} layers + {c['mtp_layers']} MTP layer: {c['hf_bytes'] / GB:.2f} GB of HF "
        f"safetensors ({c['tensors']} tensors). Ours: `hy3 convert hf-to-mcore --workers {res['method']['workers']}`. "
        f"Theirs: mcore-bridge 1.6.5 builds the transformer-engine-spec model and runs `bridge.load_weights`, then "
        f"ms-swift 4.6.0 `save_mcore_checkpoint` (what `megatron export --to_mcore` does), world size 1, on the CPU "
        f"through the tests' transformer_engine stand-in. Each side is a child process timed to the end of `sync`; "
        f"peak RSS is its VmHWM; {res['method']['statistic']} of {res['method']['repeats']} repeats, order alternating; "
        f"page cache {res['method']['page_cache']}. {res['machine']['cpus']} CPUs shared with other work (load "
        f"average at each start: {', '.join(map(str, res['machine']['load_average_at_start']))}). Produced by "
        f"`{res['method']['command']}`.", "",
        "| | seconds | peak RSS |", "|---|---:|---:|",
        f"| `hy3 convert hf-to-mcore` | {o['seconds']:.1f} | {o['peak_rss_bytes'] / 2**20:.0f} MiB |",
        f"| mcore-bridge build + `load_weights` + ms-swift `save_mcore_checkpoint` | {t['seconds']:.1f} | "
        f"{t['peak_rss_bytes'] / 2**20:.0f} MiB |",
        f"| ratio (ours / theirs) | {res['time_ratio']:.2f}x | {res['memory_ratio']:.2f}x |", "",
        "Ours / theirs within each repeat: " + ", ".join(f"{x:.2f}" for x in res["time_ratio_same_repeat"]) + ".",
        f"Outputs (checked after timing): {verdict}: {chk['tensors']} tensors compared bit for bit "
        f"({len(chk['mismatched'])} differ), the same {chk['objects']} `_extra_state` objects.", "",
        "Targets: at most 0.5x their time and at most a third of their memory."
        + (" The machine was shared with other work during this run (load averages above); a quiet machine gives "
           "steadier numbers." if max(res["machine"]["load_average_at_start"]) > 1.5 else ""), "",
        "<details><summary>raw results (JSON)</summary>", "", "```json", json.dumps(res, indent=1), "```", "",
        "</details>"]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        theirs_child(sys.argv[2], sys.argv[3])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="where to build and convert (default: a new directory under /tmp, deleted at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--experts", type=int, default=12, help="routed experts per MoE layer (default 12)")
    p.add_argument("--layers", type=int, default=3, help="decoder layers (default 3)")
    p.add_argument("--dense-layers", type=int, default=1, help="leading dense layers (default 1)")
    p.add_argument("--mtp", type=int, default=1, help="MTP layers (default 1)")
    p.add_argument("--shards", type=int, default=4, help="shard files of the synthetic HF checkpoint (default 4)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each side (default 2)")
    p.add_argument("--workers", type=int, default=4, help="hy3 convert --workers (default 4, its default)")
    p.add_argument("--warm", action="store_true", help="do not drop the page cache before each run")
    p.add_argument("--doc", default=str(REPO / "docs" / "benchmarks.md"), help="markdown file to update ('' = none)")
    args = p.parse_args()
    res = run(args)
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    if args.doc:
        write_doc(Path(args.doc), markdown(res), START, END)
        print(f"updated {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
