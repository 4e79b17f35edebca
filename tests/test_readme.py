"""The README's path from convert to export, run as written on tiny models, from a directory that is not the
checkout: every `hy3` line of the block under "The path", with /models, /ckpt, /adapters and data.jsonl in a
temporary directory.

Two lines cannot run here as they would on a cluster: `hy3 launch` runs as a dry run (no GPUs) with --skip-plan
(the recipe's TP8/EP8 layout is for the published Hy3, not for a tiny model; `tests/test_launch.py` plans it
at full size), and ms-swift's saves are laid out as ms-swift 4.6 lays them out (`vX-YYYYMMDD-HHMMSS/checkpoint-N/`)
from our torch_dist conversion and from a tiny LoRA adapter (tests/test_swift_megatron.py converts ms-swift's own
save laid out the same way)."""

from __future__ import annotations

import re
import shlex
import shutil

from conftest import REPO, assert_ok, load_tensors, run_cli, same_bits


def path_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## The path: convert -> plan -> launch -> export", 1)[1].split("```bash\n", 1)[1]
    block = block.split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.startswith("hy3 ")]


def test_the_readme_path_runs_as_written_on_tiny_models(tmp_path, tiny_outer, tiny_inner):
    lines = path_block()
    assert [shlex.split(ln)[1] for ln in lines] == ["convert", "check", "convert", "plan", "plan", "launch",
                                                    "convert", "lora", "lora"]
    work = tmp_path / "user"
    (work / "models").mkdir(parents=True)
    shutil.copytree(tiny_outer, work / "models" / "Hy3-outer")
    (work / "data.jsonl").write_text('{"reasoning_effort": "high", "messages": [{"role": "user", "content": "2+2?"}, '
                                     '{"role": "assistant", "content": "4", "reasoning_content": "Two and two."}]}\n')

    def real(line: str) -> list[str]:
        line = re.sub(r"(?<![\w.])/(models|ckpt|adapters)/", lambda m: f"{work}/{m.group(1)}/", line)
        return [str(work / a) if a == "data.jsonl" else a for a in shlex.split(line)[1:]]

    for line in lines:
        argv = real(line)
        if argv[0] == "launch":
            hosts = ",".join(f"10.0.0.{i}" for i in range(1, 9))   # the recipe's 8 nodes, as the README says
            proc = assert_ok(run_cli(*argv, "--dry-run", "--skip-plan", cwd=work, env={"IP_LIST": hosts}))
            assert "megatron sft" in proc.stdout and "--template hy3" in proc.stdout
            save_like_ms_swift(work)
            continue
        proc = assert_ok(run_cli(*argv, cwd=work, timeout=600))
        if argv[:2] == ["convert", "mcore-to-hf"]:
            assert "checkpoint-20" in proc.stderr   # says which checkpoint it read
    # what came out: the model back byte for byte, a merged model that passes `hy3 check`, a PEFT adapter
    back, ref = load_tensors(work / "models" / "Hy3-sft"), load_tensors(tiny_inner)
    assert sorted(back) == sorted(ref) and all(same_bits(back[k], ref[k]) for k in ref)
    assert_ok(run_cli("check", work / "models" / "Hy3-lora", "--quiet"))
    assert (work / "adapters" / "hy3-sft" / "adapter_model.safetensors").exists()


def save_like_ms_swift(work) -> None:
    """What `megatron sft --output_dir /ckpt/run` leaves: runs with checkpoints (ours, renumbered), newest last."""
    mcore = work / "ckpt" / "Hy3-mcore"
    for run, steps in (("v0-20260101-120000", (10,)), ("v1-20260102-090000", (10, 20))):
        for step in steps:
            ck = work / "ckpt" / "run" / run / f"checkpoint-{step}"
            shutil.copytree(mcore, ck)
            (ck / "iter_0000001").rename(ck / f"iter_{step:07d}")
            (ck / "latest_checkpointed_iteration.txt").write_text(str(step))
    adapter = work / "ckpt" / "lora-run" / "v0-20260103-080000" / "checkpoint-20"
    assert_ok(run_cli("lora", "make-tiny", "--model", work / "models" / "Hy3", adapter, "--quiet"))
