"""The one convention of every `hy3` command (README, "One convention"): results on stdout, progress and
`wrote ...` on stderr; `--json` wherever a command produces a result; exit 130 on SIGINT; `--model` for the
model directory (older names kept as aliases); outputs created with the user's umask."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import stat
from contextlib import contextmanager

import pytest

from conftest import TEST_RECIPE, assert_ok, files_bytes, run_cli
from data_helpers import model_dir, write_jsonl
from megatron_hy.cli import build_parser
from test_cli import COMMANDS
from test_data_encode import ALL_ROWS

LEAVES = {path: p for path, p in COMMANDS if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)}


def options(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings}


def test_every_command_that_produces_a_result_has_json():
    missing = [" ".join(path) for path, p in LEAVES.items() if "--json" not in options(p)]
    assert not missing, missing


# Every command that reads a model directory names it --model; verify parity (commands/verify.py) is the lead's.
MODEL_COMMANDS = {("convert", "mcore-to-hf"): "--hf-config", ("lora", "merge"): "--base",
                  ("lora", "export-peft"): "--base", ("data", "encode"): "--tokenizer", ("data", "stats"): "--tokenizer",
                  ("plan",): "--hf-config", ("launch",): "--hf-config", ("check",): None, ("config",): None,
                  ("lora", "make-tiny"): None, ("data", "check-template"): None, ("verify", "parity"): None}


@pytest.mark.parametrize("path", list(MODEL_COMMANDS), ids=" ".join)
def test_the_model_directory_is_model_everywhere_with_the_old_name_kept(path):
    assert "--model" in options(LEAVES[path])
    old = MODEL_COMMANDS[path]
    if old is not None:
        assert old in options(LEAVES[path])
        action = next(a for a in LEAVES[path]._actions if "--model" in a.option_strings)
        assert old in action.option_strings   # the same flag, not a second one


def test_old_and_new_model_names_parse_alike():
    parse = build_parser().parse_args
    for argv in (["lora", "merge", "--adapter", "A", "OUT"], ["convert", "mcore-to-hf", "IN", "OUT"],
                 ["data", "encode", "IN", "OUT"]):
        old = {"lora": "--base", "convert": "--hf-config", "data": "--tokenizer"}[argv[0]]
        assert parse(argv + [old, "M"]).model == parse(argv + ["--model", "M"]).model == "M"


def test_the_model_directory_given_twice_is_refused():
    proc = run_cli("lora", "merge", "--model", "A", "--base", "B", "--adapter", "X", "OUT")
    assert proc.returncode == 2 and "the model directory is already given (A)" in proc.stderr


def test_positional_or_model_flag_name_the_same_directory(tiny_inner):
    a = assert_ok(run_cli("config", tiny_inner, "--to", "summary", "--json")).stdout
    b = assert_ok(run_cli("config", "--model", tiny_inner, "--to", "summary", "--json")).stdout
    assert a == b and json.loads(a)["num_layers"] == 3


# --- results on stdout, `wrote` on stderr -------------------------------------------------------------

def test_make_tiny_reports_on_stderr_and_its_result_as_json(tmp_path):
    proc = assert_ok(run_cli("make-tiny", tmp_path / "m", "--layers", "2", "--no-tokenizer"))
    assert proc.stdout == ""
    assert f"wrote {tmp_path / 'm'}: tiny Hy3 (inner layout)" in proc.stderr
    assert "[make-tiny] step 1 of 4" in proc.stderr and "[make-tiny] step 4 of 4" in proc.stderr   # progress
    proc = assert_ok(run_cli("make-tiny", tmp_path / "j", "--layers", "2", "--no-tokenizer", "--json", "--quiet"))
    assert json.loads(proc.stdout)["output"] == str(tmp_path / "j") and proc.stderr == ""


def test_lora_make_tiny_reports_on_stderr(tiny_inner, tmp_path):
    proc = assert_ok(run_cli("lora", "make-tiny", tiny_inner, tmp_path / "a"))
    assert proc.stdout == "" and f"wrote {tmp_path / 'a'}: random mcore LoRA adapter" in proc.stderr
    res = json.loads(assert_ok(run_cli("lora", "make-tiny", "--model", tiny_inner, tmp_path / "b", "--json")).stdout)
    assert res["output"] == str(tmp_path / "b") and res["format"] == "mcore"


def test_convert_prints_its_result_as_json(tiny_inner, tmp_path):
    proc = assert_ok(run_cli("convert", "inner-to-outer", tiny_inner, tmp_path / "o", "--json"))
    res = json.loads(proc.stdout)
    assert res["output"] == str(tmp_path / "o") and res["tensors"] > 0 and res["shards"] >= 1
    assert f"wrote {tmp_path / 'o'}" in proc.stderr


def test_plan_writes_name_their_file_on_stderr(tmp_path):
    out = tmp_path / "best.yaml"
    proc = assert_ok(run_cli("plan", "--search", "--nodes", "2", "--gpus-per-node", "8", "--gpu-mem", "141",
                             "--seq", "4096", "--lora", "--top", "2", "--write-recipe", out, "--plot",
                             tmp_path / "s.png"))
    assert f"wrote {out}: the best layout as a recipe" in proc.stderr and f"wrote {tmp_path / 's.png'}" in proc.stderr
    assert "wrote" not in proc.stdout and " #  TP PP" in proc.stdout


# --- SIGINT -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["convert", "inner-to-outer", "--max-shard-size", "100KB", "--workers", "1"],
                                  ["convert", "hf-to-mcore", "--max-file-size", "100KB", "--workers", "1"]],
                         ids=["inner-to-outer", "hf-to-mcore"])
def test_sigint_exits_130_and_the_rerun_resumes(tiny_inner, tmp_path, argv):
    """Ctrl-C in the middle of writing (kill_signal="INT": the process sends itself SIGINT once 200 KB
    are written): exit 130, one line saying what was kept, and the rerun finishes the same output."""
    cmd = [*argv[:2], tiny_inner, tmp_path / "out", *argv[2:]]
    proc = run_cli(*cmd, kill_after_bytes=200000, kill_signal="INT", timeout=600)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "hy3: error:" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("hy3: interrupted:")]
    assert f"{tmp_path / 'out.partial'} holds the finished files; rerun the same command to resume" in line
    assert not (tmp_path / "out").exists()
    assert "resuming" in assert_ok(run_cli(*cmd, timeout=600)).stderr
    assert_ok(run_cli(*[*argv[:2], tiny_inner, tmp_path / "ref", *argv[2:]], timeout=600))
    mine, ref = files_bytes(tmp_path / "out"), files_bytes(tmp_path / "ref")
    assert sorted(mine) == sorted(ref)
    data = [k for k in mine if k.endswith((".safetensors", ".distcp"))]
    assert data and all(mine[k] == ref[k] for k in data)   # the tensor data, byte for byte


# --- umask ----------------------------------------------------------------------------------------------

@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(tmp_path, mask, mode):
    rows = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS[:3])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEST_RECIPE)
    with umask(mask):
        assert_ok(run_cli("data", "convert", "--from", "sharegpt", rows, tmp_path / "conv.jsonl"))
        assert_ok(run_cli("data", "encode", "--tokenizer", model_dir(), rows, tmp_path / "enc.jsonl"))
        assert_ok(run_cli("plan", recipe, "--plot", tmp_path / "plan.png"))
        assert_ok(run_cli("plan", "--search", "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem", "141", "--seq",
                          "4096", "--lora", "--top", "1", "--write-recipe", tmp_path / "best.yaml"))
    for name in ("conv.jsonl", "enc.jsonl", "plan.png", "best.yaml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# --- hy3 config --to swift is what hy3 launch runs --------------------------------------------------------

def test_config_to_swift_gives_every_model_flag_hy3_launch_passes(tiny_inner, tmp_path):
    """A hand-run `megatron sft` with `hy3 config DIR --to swift`'s flags gets what `hy3 launch` passes for that
    model: the model directory, the plugin, the plugin's template (not ms-swift's hy_v3, which drops the
    reasoning), the MoE training settings. (A recipe that trains the MTP layer, so mtp_num_layers agrees.)"""
    rows = write_jsonl(tmp_path / "rows.jsonl", ALL_ROWS[:2])
    text = assert_ok(run_cli("config", tiny_inner, "--to", "swift")).stdout
    mine = flag_values(shlex.split(text.replace("\\\n", " ")))
    assert {"--model", "--template", "--custom_register_path", "--megatron_extra_kwargs"} <= set(mine)
    assert mine["--template"] == ["hy3"] and mine["--model"] == [str(tiny_inner.resolve())]
    launch = json.loads(assert_ok(run_cli("launch", "lora-80g-2n-16k-mtp", "--model", tiny_inner, "--dataset", rows,
                                          "--output-dir", tmp_path / "run", "--dry-run", "--json", "--skip-plan",
                                          env={"IP_LIST": "10.0.0.1,10.0.0.2"})).stdout)
    theirs = flag_values(launch["nodes"][0]["argv"][2:])
    for flag, values in mine.items():
        assert flag in theirs, flag
        assert normal(values) == normal(theirs[flag]), (flag, values, theirs[flag])
    json_flags = json.loads(assert_ok(run_cli("config", tiny_inner, "--to", "swift", "--json")).stdout)["flags"]
    assert flag_values(json_flags) == mine


def flag_values(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    flag = None
    for a in argv:
        if a.startswith("--"):
            flag = a
            out[flag] = []
        else:
            out[flag].append(a)
    return out


def normal(values: list[str]):
    """JSON values compare as data (key order aside), paths as resolved paths, numbers as numbers."""
    out = []
    for v in values:
        try:
            out.append(json.loads(v))
        except ValueError:
            out.append(os.path.realpath(v) if v.startswith("/") else v)
    return out
