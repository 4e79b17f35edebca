"""`hy3 demo`: the whole pipeline on a tiny generated Hy3, no GPU, no network.

Each step is a function of a shared context that returns one line saying what it verified.
Later pipeline stages add their steps to STEPS.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from .check import check_checkpoint
from .convert.hf_to_mcore import hf_to_mcore
from .convert.layout import convert_layout
from .convert.mcore_to_hf import mcore_to_hf
from .data.demo_step import step_data as run
from .errors import Hy3Error
from .formats.safetensors_io import open_checkpoint, read_bytes
from .lora.export import export_peft
from .lora.merge import merge_lora
from .lora.tiny import write_tiny_adapter
from .megatron.parity import compare, random_tokens, run_parity
from .outputs import check_dir, DEMO, write_marker
from .reference import load_hf_model
from .tiny import TinySpec, write_tiny


def step_make_tiny(ctx: dict) -> str:
    ctx["inner"] = write_tiny(ctx["work"] / "tiny-inner", TinySpec(), fmt="inner", seed=0)
    return "tiny Hy3 written by transformers' HYV3ForCausalLM: 3 layers (1 dense), 8 experts, 1 MTP layer, 5 shards"


def step_inner_to_outer(ctx: dict) -> str:
    r = convert_layout(ctx["inner"], ctx["work"] / "tiny-outer", "outer", quiet=True)
    ctx["outer"] = Path(r["output"])
    return f"{r['tensors']} fused tensors, {r['bytes']} bytes copied by byte range"


def step_outer_to_inner(ctx: dict) -> str:
    back = ctx["work"] / "tiny-inner-again"
    convert_layout(ctx["outer"], back, "inner", quiet=True)
    return f"inner -> outer -> inner is byte-identical for all {_same_tensors(ctx['inner'], back, 'outer->inner')} tensors"


def step_check(ctx: dict) -> str:
    for key in ("inner", "outer"):
        rep = check_checkpoint(ctx[key], spot_check=100)
        if not rep.ok:
            raise Hy3Error(f"hy3 check {ctx[key]}: " + "; ".join(rep.errors[:3]))
    return "hy3 check: both layouts clean (keys, shapes, dtypes, index, NaN/Inf in every shard)"


def step_mcore(ctx: dict) -> str:
    r = hf_to_mcore(ctx["outer"], ctx["work"] / "tiny-mcore", quiet=True)
    ctx["mcore"] = Path(r["output"])
    back = ctx["work"] / "tiny-from-mcore"
    mcore_to_hf(ctx["mcore"], back, ctx["inner"], quiet=True)
    n = _same_tensors(ctx["inner"], back, "HF -> torch_dist -> HF")
    return f"torch_dist written offline ({r['tensors']} Megatron tensors), back to HF byte-identical for all {n} tensors"


def step_parity(ctx: dict) -> str:
    sources = [("hf", ctx["inner"]), ("hf", ctx["outer"]), ("mcore", ctx["mcore"])]
    results, _ = run_parity(ctx["inner"], sources, tp=2, ep=2)
    worst = max(results, key=lambda r: max(r.max_rel_err, r.mtp_max_rel_err or 0))
    if not all(r.passed for r in results):
        raise Hy3Error(f"Megatron logits differ from transformers: max rel error {worst.max_rel_err:.2e}")
    return (f"megatron-core GPTModel under {results[0].layout} (4 CPU processes), weights from HF inner, HF outer and "
            f"torch_dist, vs transformers: logits rel err <= {worst.max_rel_err:.1e}, MTP <= "
            f"{worst.mtp_max_rel_err:.1e} (tolerance 1e-5)")


def _same_tensors(a, b, what: str) -> int:
    ta, tb = open_checkpoint(a).tensors, open_checkpoint(b).tensors
    if set(ta) != set(tb):
        raise Hy3Error(f"{what} produced a different key set")
    for k in ta:
        if ta[k].dtype != tb[k].dtype or \
                read_bytes(ta[k].file, ta[k].start, ta[k].nbytes) != read_bytes(tb[k].file, tb[k].start, tb[k].nbytes):
            raise Hy3Error(f"{what} changed the bytes of {k}")
    return len(ta)


def step_lora(ctx: dict) -> str:
    import torch

    kinds = ("attention", "dense", "shared", "experts", "mtp")
    adapter = write_tiny_adapter(ctx["inner"], ctx["work"] / "lora-adapter", "mcore", kinds, seed=1, saved_tp=2)
    merged = ctx["work"] / "tiny-lora-merged"
    r = merge_lora(ctx["inner"], adapter, merged, dtype="fp32", quiet=True)
    rep = check_checkpoint(merged)
    if not rep.ok:
        raise Hy3Error(f"merged checkpoint fails hy3 check: {rep.errors[0]}")
    report = export_peft(adapter, ctx["inner"], ctx["work"] / "lora-peft", quiet=True)
    from peft import PeftModel

    ids = random_tokens(512, 2, 12, 0)
    with torch.no_grad():
        want = load_hf_model(merged)(ids).logits
        got = PeftModel.from_pretrained(load_hf_model(ctx["inner"]), str(ctx["work"] / "lora-peft")).eval()(ids).logits
    _, rel = compare(got, want)
    if rel > 1e-5:
        raise Hy3Error(f"PEFT adapter and merged checkpoint disagree: rel error {rel:.2e}")
    return (f"Megatron torch_dist adapter (saved under TP2): {r['merged']} tensors merged, hy3 check clean; PEFT export "
            f"on HYV3ForCausalLM matches the merged weights (rel err {rel:.1e}); "
            f"{len(report['not_exported'])} MTP targets reported as having no PEFT equivalent")


def step_data(ctx: dict) -> str:
    return run(ctx)


STEPS: list[tuple[str, Callable[[dict], str]]] = [
    ("make tiny Hy3", step_make_tiny),
    ("convert inner -> outer", step_inner_to_outer),
    ("convert outer -> inner", step_outer_to_inner),
    ("check", step_check),
    ("convert HF <-> torch_dist", step_mcore),
    ("parity: Megatron vs HF", step_parity),
    ("LoRA: merge and export PEFT", step_lora),
    ("data: validate and encode", step_data),
]


def run_demo(workdir: str | None = None, keep: bool = False, out=print, rows: list | None = None) -> int:
    """Every step in turn; `out` gets the report line by line, `rows` (when given) each step's
    (name, seconds, status, what)."""
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="hy3-demo-"))
    if workdir:
        check_dir(work, DEMO, overwrite=None)
        work.mkdir(parents=True, exist_ok=True)
        write_marker(work, DEMO)
    ctx = {"work": work}
    out(f"hy3 demo: the whole pipeline on a tiny generated Hy3 (work directory {work})")
    t_all = time.monotonic()
    failed = None
    rows = [] if rows is None else rows
    for name, fn in STEPS:
        t = time.monotonic()
        try:
            what = fn(ctx)
            status = "ok"
        except Hy3Error as e:
            what, status, failed = str(e), "FAILED", name
        rows.append((name, time.monotonic() - t, status, what))
        out(f"  [{status:>6}] {name:<28} {rows[-1][1]:6.1f}s  {what}")
        if failed:
            break
    out(f"{'demo failed at: ' + failed if failed else 'all steps passed'} in {time.monotonic() - t_all:.1f}s")
    if keep or workdir:
        out(f"outputs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0
