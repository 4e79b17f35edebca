"""ms-swift's run directories (OUT/vX-YYYYMMDD-HHMMSS/checkpoint-N/, ms-swift 4.6): `hy3 convert mcore-to-hf`,
`hy3 lora merge` and `hy3 lora export-peft` take the output directory, a run or a checkpoint, read the newest
checkpoint-N (and say which; --checkpoint N picks another), and tell a torch_dist checkpoint from HF safetensors.

The runs here are laid out from our own outputs as ms-swift lays out its saves (tests/test_swift_megatron.py
converts a checkpoint ms-swift's saver wrote, placed in a run the same way)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import assert_ok, assert_one_error, load_tensors, run_cli, same_bits


def same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_tensors(a), load_tensors(b)
    assert sorted(ta) == sorted(tb)
    assert [k for k in ta if not same_bits(ta[k], tb[k])] == []


def save(src: Path, run: Path, step: int) -> Path:
    """A checkpoint-`step` in `run` holding the torch_dist checkpoint `src`, renumbered as ms-swift numbers it."""
    ck = run / f"checkpoint-{step}"
    shutil.copytree(src, ck)
    (ck / "iter_0000001").rename(ck / f"iter_{step:07d}")
    (ck / "latest_checkpointed_iteration.txt").write_text(str(step))
    (run / "args.json").write_text(json.dumps({"tuner_type": "full"}))
    return ck


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_inner):
    """OUT with two runs: v0 (checkpoint-1), v1 (checkpoint-2 and checkpoint-4, and the -merged directory a LoRA
    run with merge_lora writes beside a checkpoint, which is not one)."""
    root = tmp_path_factory.mktemp("swift-runs")
    mcore = root / "mcore"
    assert_ok(run_cli("convert", "hf-to-mcore", tiny_inner, mcore, "--quiet", timeout=600))
    out = root / "out"
    v0, v1 = out / "v0-20260101-120000", out / "v1-20260102-080000"
    save(mcore, v0, 1)
    for step in (2, 4):
        save(mcore, v1, step)
    (v1 / "checkpoint-9-merged").mkdir()
    return out, v0, v1


def test_the_output_directory_means_the_newest_checkpoint_of_the_newest_run(runs, tiny_inner, tmp_path):
    out, v0, v1 = runs
    proc = assert_ok(run_cli("convert", "mcore-to-hf", out, tmp_path / "hf", "--hf-config", tiny_inner, timeout=600))
    assert f"using {v1 / 'checkpoint-4'}: the newest of 2 checkpoint(s) in {v1}" in proc.stderr
    assert "the newest of 2 runs" in proc.stderr
    same_tensors(tiny_inner, tmp_path / "hf")


def test_a_run_as_the_readme_writes_it_converts(runs, tiny_inner, tmp_path):
    """`hy3 convert mcore-to-hf /ckpt/run/v0-xxx ...` (the README before issue 21) failed with an error that did
    not name the run's checkpoints."""
    out, v0, _ = runs
    proc = assert_ok(run_cli("convert", "mcore-to-hf", v0, tmp_path / "hf", "--hf-config", tiny_inner, timeout=600))
    assert f"using {v0 / 'checkpoint-1'}" in proc.stderr
    same_tensors(tiny_inner, tmp_path / "hf")


def test_checkpoint_picks_one_and_a_missing_one_is_named(runs, tiny_inner, tmp_path):
    out, v0, v1 = runs
    proc = assert_ok(run_cli("convert", "mcore-to-hf", out, tmp_path / "hf", "--model", tiny_inner, "--checkpoint",
                             "2", "--quiet", "--json", timeout=600))
    assert proc.stderr == "" and json.loads(proc.stdout)["output"] == str(tmp_path / "hf")
    assert_one_error(run_cli("convert", "mcore-to-hf", v1, tmp_path / "x", "--model", tiny_inner, "--checkpoint", "3"),
                     f"--checkpoint 3: {v1} has no checkpoint-3; it has checkpoint-2, checkpoint-4")
    assert_one_error(run_cli("convert", "mcore-to-hf", out, tmp_path / "x", "--model", tiny_inner, "--checkpoint", "7"),
                     "no run under", "v0-20260101-120000: checkpoint-1", "v1-20260102-080000: checkpoint-2, checkpoint-4")
    assert not (tmp_path / "x").exists()


def test_a_run_without_checkpoints_says_so(tmp_path, tiny_inner):
    run = tmp_path / "out" / "v0-20260103-090000"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    assert_one_error(run_cli("convert", "mcore-to-hf", run, tmp_path / "hf", "--model", tiny_inner),
                     "an ms-swift run directory with no checkpoint-N yet")
    assert_one_error(run_cli("convert", "mcore-to-hf", tmp_path / "out", tmp_path / "hf", "--model", tiny_inner),
                     "v0-20260103-090000", "no checkpoint-N yet")


@pytest.mark.parametrize("fmt", ["inner", "outer"])
def test_a_safetensors_checkpoint_is_told_from_a_torch_dist_one(tmp_path, tiny_inner, tiny_outer, fmt):
    """With save_safetensors and no optimizer state (the bundled full fine-tuning recipes), ms-swift's checkpoint-N
    holds HF safetensors and an iter_* with common.pt only: its weights are written in the asked layout."""
    ck = tmp_path / "out" / "v0-20260101-120000" / "checkpoint-6"
    shutil.copytree(tiny_inner, ck, ignore=shutil.ignore_patterns("tokenizer*", ".hy3-output"))
    (ck / "latest_checkpointed_iteration.txt").write_text("6")
    (ck / "iter_0000006").mkdir()
    (ck / "iter_0000006" / "common.pt").write_bytes(b"not read")
    proc = assert_ok(run_cli("convert", "mcore-to-hf", tmp_path / "out", tmp_path / "hf", "--hf-config", tiny_inner,
                             "--format", fmt, timeout=600))
    assert f"{ck} holds HF safetensors (ms-swift's save_safetensors), no torch_dist weights" in proc.stderr
    same_tensors(tiny_inner if fmt == "inner" else tiny_outer, tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer_config.json").exists() and not (tmp_path / "hf" / "iter_0000006").exists()
    assert_one_error(run_cli("convert", "mcore-to-hf", ck, tmp_path / "x", "--model", tiny_inner, "--dtype", "fp32"),
                     "holds HF safetensors, not a torch_dist checkpoint")


def test_lora_commands_take_a_run(tmp_path, tiny_inner):
    run = tmp_path / "out" / "v0-20260101-120000"
    run.mkdir(parents=True)
    assert_ok(run_cli("lora", "make-tiny", tiny_inner, tmp_path / "adapter", "--quiet"))
    for step in (3, 5):
        shutil.copytree(tmp_path / "adapter", run / f"checkpoint-{step}")
    proc = assert_ok(run_cli("lora", "merge", "--base", tiny_inner, "--adapter", tmp_path / "out", tmp_path / "m"))
    assert f"using {run / 'checkpoint-5'}" in proc.stderr and "reading its torch_dist adapter checkpoint" in proc.stderr
    assert_ok(run_cli("lora", "merge", "--base", tiny_inner, "--adapter", tmp_path / "adapter", tmp_path / "ref",
                      "--quiet"))
    same_tensors(tmp_path / "ref", tmp_path / "m")
    proc = assert_ok(run_cli("lora", "export-peft", "--model", tiny_inner, "--adapter", run, "--checkpoint", "3",
                             tmp_path / "peft"))
    assert f"using {run / 'checkpoint-3'} (--checkpoint 3)" in proc.stderr
    assert_one_error(run_cli("convert", "mcore-to-hf", run, tmp_path / "x", "--model", tiny_inner),
                     "holds a LoRA adapter, not model weights", "hy3 lora merge")
