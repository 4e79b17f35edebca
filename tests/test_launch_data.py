"""`hy3 launch --dataset rows.jsonl`: the rows are encoded into the run's directory by `hy3 data encode`
and trained as an ms-swift cached dataset with the plugin's template, so reasoning reaches the loss."""

from __future__ import annotations

import json
import os
import stat

from conftest import TEST_RECIPE, assert_ok, assert_one_error, run_cli

ROW = {"reasoning_effort": "high", "messages": [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Two plus two is four."}]}


def fake_megatron(tmp_path):
    """Stand-ins on PATH: `megatron` records its arguments; `nvidia-smi` lists the recipe's 8 GPUs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.txt"
    fake = bindir / "megatron"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f'echo "GPU {i}: NVIDIA H200"\n' for i in range(8)))
    for f in (fake, smi):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, record


def test_rows_are_encoded_into_the_run_and_passed_as_cached_dataset(tmp_path, hy3_model):
    # hy3_model: the test recipe is planned for the published Hy3's size, and the plan reads --model's config
    env, record = fake_megatron(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEST_RECIPE)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    out = tmp_path / "run"
    proc = assert_ok(run_cli("launch", recipe, "--model", hy3_model, "--dataset", rows, "--output-dir", out, env=env))
    assert "encoding" in proc.stderr
    cached = out / "hy3-data" / "rows"
    argv = record.read_text().split()
    assert argv[argv.index("--cached_dataset") + 1] == str(cached) and "--dataset" not in argv
    assert argv[argv.index("--template") + 1] == "hy3"
    assert (cached / "dataset_info.json").exists()
    # the same examples `hy3 data encode` writes: the reasoning is in the loss
    assert_ok(run_cli("data", "encode", "--model", hy3_model, "--max-length", "4096", rows, tmp_path / "ref.jsonl"))
    assert (out / "hy3-data" / "rows.jsonl").read_text() == (tmp_path / "ref.jsonl").read_text()
    import datasets

    ds = datasets.load_from_disk(str(cached))
    assert ds[0]["input_ids"] == json.loads((tmp_path / "ref.jsonl").read_text())["input_ids"]
    # a rerun reuses it; different rows under the same name are refused
    assert "encoding" not in assert_ok(run_cli("launch", recipe, "--model", hy3_model, "--dataset", rows,
                                               "--output-dir", out, env=env)).stderr
    rows.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n")
    assert_one_error(run_cli("launch", recipe, "--model", hy3_model, "--dataset", rows, "--output-dir", out, env=env),
                     "encoded from other input", str(cached))


def test_rows_without_a_run_directory_fail_with_how(tmp_path, tiny_inner):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEST_RECIPE)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(ROW) + "\n")
    assert_one_error(run_cli("launch", recipe, "--model", tiny_inner, "--dataset", rows, "--dry-run"),
                     "--output-dir", "hy3 data encode", "reasoning_content")
