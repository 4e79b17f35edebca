"""The output policy (megatron_hy/outputs.py) of every writing command: an output is never, contains, or lies
inside an input; --overwrite replaces only a directory hy3 wrote as the same kind of output; an existing file
needs --overwrite. Every refusal leaves every file byte-identical. Commands run through the CLI entry point
in this process (as `hy3` runs them, without a new interpreter per call, to stay cheap)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from conftest import TEST_RECIPE, assert_ok, assert_one_error, copy_checkpoint
from megatron_hy.cli import main
from megatron_hy.outputs import (ADAPTER, HF_CHECKPOINT, MARKER, SWIFT_DATASET, TOKENIZER, TORCH_DIST,
                                written_kind)

ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


def hy3(*args) -> subprocess.CompletedProcess:
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(argv)
    return subprocess.CompletedProcess(["hy3", *argv], rc, out.getvalue(), err.getvalue())


def snapshot(root: Path) -> dict:
    """Every path under root: a file's bytes, or "dir"."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def pristine(tiny_inner, tiny_outer, tmp_path_factory) -> dict:
    """One of each kind of input, written by hy3 (so each carries the output marker)."""
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore
    from megatron_hy.lora.tiny import write_tiny_adapter

    root = tmp_path_factory.mktemp("outputs")
    (root / "rows.jsonl").write_text(json.dumps(ROW) + "\n")
    (root / "share.jsonl").write_text(json.dumps(SHAREGPT) + "\n")
    (root / "recipe.yaml").write_text(TEST_RECIPE)
    return {"hf": tiny_inner, "outer": tiny_outer, "rows": root / "rows.jsonl", "share": root / "share.jsonl",
            "recipe": root / "recipe.yaml",
            "mcore": Path(hf_to_mcore(tiny_inner, root / "mcore", quiet=True)["output"]),
            "adapter": write_tiny_adapter(tiny_inner, root / "adapter", "mcore", seed=1)}


def place(pristine: dict, keys, where: Path) -> dict:
    """Copies of the inputs `keys` under where/in, and where/work for anything else (a recipe to launch)."""
    paths = {"work": where / "work"}
    paths["work"].mkdir(parents=True)
    (paths["work"] / "recipe.yaml").write_text(TEST_RECIPE)
    for k in keys:
        dst = where / "in" / pristine[k].name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if pristine[k].is_dir() else shutil.copy2)(pristine[k], dst)
        paths[k] = dst
    return paths


# Each writing command: its inputs, and its argv for the given input paths and output.
COMMANDS = {
    "inner-to-outer": (["hf"], lambda p, o: ["convert", "inner-to-outer", p["hf"], o, "--overwrite"]),
    "outer-to-inner": (["outer"], lambda p, o: ["convert", "outer-to-inner", p["outer"], o, "--overwrite"]),
    "hf-to-mcore": (["hf"], lambda p, o: ["convert", "hf-to-mcore", p["hf"], o, "--overwrite"]),
    "mcore-to-hf": (["mcore", "hf"],
                    lambda p, o: ["convert", "mcore-to-hf", p["mcore"], o, "--hf-config", p["hf"], "--overwrite"]),
    "lora merge": (["hf", "adapter"],
                   lambda p, o: ["lora", "merge", "--base", p["hf"], "--adapter", p["adapter"], o, "--overwrite"]),
    "lora export-peft": (["adapter", "hf"],
                         lambda p, o: ["lora", "export-peft", "--adapter", p["adapter"], "--base", p["hf"], o,
                                       "--overwrite"]),
    "lora make-tiny": (["hf"], lambda p, o: ["lora", "make-tiny", p["hf"], o, "--overwrite"]),
    "data encode": (["rows", "hf"], lambda p, o: ["data", "encode", "--tokenizer", p["hf"], p["rows"], o,
                                                  "--overwrite"]),
    "data encode --swift-dataset": (["rows", "hf"],
                                    lambda p, o: ["data", "encode", "--tokenizer", p["hf"], p["rows"],
                                                  p["work"] / "enc.jsonl", "--swift-dataset", o, "--overwrite"]),
    "data convert": (["share"], lambda p, o: ["data", "convert", "--from", "sharegpt", p["share"], o, "--overwrite"]),
    "plan --write-recipe": (["recipe", "hf"],
                            lambda p, o: ["plan", p["recipe"], "--search", "--hf-config", p["hf"], "--write-recipe", o]),
    "launch --output-dir": (["hf", "rows"], lambda p, o: ["launch", p["work"] / "recipe.yaml", "--model", p["hf"],
                                                          "--dataset", p["rows"], "--output-dir", o, "--dry-run"]),
    "make-tiny": ([], lambda p, o: ["make-tiny", o, "--overwrite"]),
    "data standin-tokenizer": ([], lambda p, o: ["data", "standin-tokenizer", o, "--overwrite"]),
}
CASES = [(c, k) for c, (keys, _) in COMMANDS.items() for k in keys]


@pytest.mark.parametrize("relation", ["is", "contains", "lies inside", "link"])
@pytest.mark.parametrize("command,key", CASES, ids=[f"{c}:{k}" for c, k in CASES])
def test_an_output_that_is_contains_or_lies_inside_an_input_is_refused(command, key, relation, pristine, tmp_path):
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    out = {"is": p[key], "contains": p[key].parent, "lies inside": p[key] / "sub", "link": tmp_path / "link"}[relation]
    if relation == "link":
        out.symlink_to(p[key])  # the link is followed: the output is the input
    before = snapshot(tmp_path)
    line = assert_one_error(hy3(*argv(p, out)), "refused", f"the output {'is' if relation == 'link' else relation} "
                                                            "the input")
    if relation != "contains":
        assert str(p[key]) in line
    assert snapshot(tmp_path) == before


WRITES_A_DIRECTORY = [c for c in COMMANDS if c not in ("data encode", "data convert", "plan --write-recipe",
                                                       "launch --output-dir")]


@pytest.mark.parametrize("command", WRITES_A_DIRECTORY)
def test_overwrite_never_replaces_a_directory_hy3_did_not_write(command, pristine, tmp_path):
    """Among them `lora make-tiny HF_DIR OUT` onto an unrelated directory (it used to delete it unasked)."""
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    assert_one_error(hy3(*argv(p, out)), str(out), "hy3 did not write it", "even with --overwrite")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["data encode --swift-dataset", "data standin-tokenizer", "lora make-tiny"])
def test_overwrite_never_replaces_a_model_directory_with_another_kind_of_output(command, pristine, tmp_path):
    """`data encode --swift-dataset` or `standin-tokenizer` onto a model directory, even one hy3 wrote."""
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    model = copy_checkpoint(pristine["mcore" if command == "lora make-tiny" else "hf"], tmp_path / "model")
    before = snapshot(tmp_path)
    assert_one_error(hy3(*argv(p, model)), str(model), "that hy3 wrote, which a", "does not replace")
    assert snapshot(tmp_path) == before


def test_standin_tokenizer_keeps_an_existing_tokenizer(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"real": "tokenizer"}')
    before = snapshot(tmp_path)
    for flags in ([], ["--overwrite"]):
        assert_one_error(hy3("data", "standin-tokenizer", tok, *flags), str(tok), "hy3 did not write it")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command,kind", [("data standin-tokenizer", TOKENIZER),
                                          ("data encode --swift-dataset", SWIFT_DATASET)])
def test_a_directory_hy3_wrote_needs_overwrite_and_is_then_replaced(command, kind, pristine, tmp_path):
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    out = tmp_path / "out"
    assert_ok(hy3(*argv(p, out)))
    assert written_kind(out) == kind
    first = snapshot(out)
    (out / "stray.txt").write_text("x")
    (p["work"] / "enc.jsonl").unlink(missing_ok=True)  # encode's other output: the directory is the one refused
    without = [a for a in argv(p, out) if a != "--overwrite"]
    assert_one_error(hy3(*without), str(out), "already exists", "pass --overwrite")
    assert (out / "stray.txt").exists()
    assert_ok(hy3(*argv(p, out)))
    assert snapshot(out) == first  # the old directory was replaced whole, by the same output
    assert not any(q.name.startswith(("out.", ".out.")) for q in tmp_path.iterdir())  # no staging left


@pytest.mark.parametrize("command", ["data encode", "data convert"])
def test_an_existing_file_needs_overwrite(command, pristine, tmp_path):
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    out = tmp_path / "out.jsonl"
    out.write_text("someone's file\n")
    before = snapshot(tmp_path)
    without = [a for a in argv(p, out) if a != "--overwrite"]
    assert_one_error(hy3(*without), str(out), "already exists", "pass --overwrite")
    assert snapshot(tmp_path) == before
    assert_ok(hy3(*argv(p, out)))
    assert out.read_text() != "someone's file\n" and json.loads(out.read_text().splitlines()[0])


@pytest.mark.parametrize("command", ["data encode", "data convert"])
def test_a_file_beside_the_output_named_like_a_temporary_is_kept(command, pristine, tmp_path):
    keys, argv = COMMANDS[command]
    p = place(pristine, keys, tmp_path)
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text("someone's file\n")
    assert_ok(hy3(*argv(p, out)))
    assert (tmp_path / "out.jsonl.partial").read_text() == "someone's file\n"
    assert [q.name for q in tmp_path.glob("*.partial")] == ["out.jsonl.partial"]


def test_a_staging_directory_hy3_did_not_make_is_kept(pristine, tmp_path):
    """OUT.partial is where hy3 stages OUT; a directory there that hy3 did not make is neither used nor removed."""
    keys, argv = COMMANDS["lora make-tiny"]
    p = place(pristine, keys, tmp_path)
    staging = tmp_path / "out.partial"
    staging.mkdir()
    (staging / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    assert_one_error(hy3(*argv(p, tmp_path / "out")), str(staging), "hy3 did not write it")
    assert snapshot(tmp_path) == before


def test_demo_refuses_a_workdir_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes")
    assert_one_error(hy3("demo", "--workdir", tmp_path), str(tmp_path), "not an empty directory")
    assert snapshot(tmp_path) == {"notes.txt": b"my notes"}


def test_every_directory_hy3_finishes_carries_the_marker(pristine):
    kinds = {"hf": HF_CHECKPOINT, "mcore": TORCH_DIST, "adapter": ADAPTER}
    for key, kind in kinds.items():
        assert json.loads((pristine[key] / MARKER).read_text()) == {"written_by": "megatron-hy", "kind": kind}
