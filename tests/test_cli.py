"""`hy3 --help` and every subcommand's help; the drop-in scripts for Tencent's converter and checker."""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from conftest import REPO, assert_ok, assert_one_error, copy_checkpoint, files_bytes, rewrite, run_cli, run_python
from megatron_hy.cli import build_parser

CONVERT = REPO / "converters" / "convert_ckpt_to_outer.py"
CHECK = REPO / "converters" / "check_converted.py"


def command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command of the CLI, with its parser."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((prefix + (name,), sub))
                out += command_paths(sub, prefix + (name,))
    return out


COMMANDS = command_paths(build_parser())


def test_top_level_help_lists_every_command():
    proc = assert_ok(run_cli("--help"))
    assert proc.stdout.startswith("usage: hy3")
    for path, _ in COMMANDS:
        if len(path) == 1:
            assert path[0] in proc.stdout


def test_version():
    assert assert_ok(run_cli("--version")).stdout.startswith("megatron-hy ")


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help_explaining_every_flag(path):
    proc = assert_ok(run_cli(*path, "--help"))
    assert proc.stdout.startswith("usage: hy3 " + " ".join(path))
    parser = dict(COMMANDS)[path]
    assert parser.description, path
    for action in parser._actions:
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            assert action.help, f"hy3 {' '.join(path)}: {action.option_strings or action.dest} has no help"


def test_expected_commands_exist():
    names = {p for p, _ in COMMANDS}
    assert {("make-tiny",), ("convert",), ("convert", "inner-to-outer"), ("convert", "outer-to-inner"),
            ("check",), ("demo",)} <= names


# --- drop-in scripts for the reference tools ---------------------------------------------------------

def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_defaults_are_kept():
    conv = load_script(CONVERT).build_parser().parse_args(["--input_dir", "a", "--output_dir", "b"])
    assert (conv.input_dir, conv.output_dir, conv.workers) == ("a", "b", 8)
    chk = load_script(CHECK).build_parser().parse_args(["d"])
    assert (chk.dir, chk.spot_check) == ("d", 3)


def test_convert_script_matches_hy3_convert(tiny_inner, tmp_path):
    assert_ok(run_cli("convert", "inner-to-outer", tiny_inner, tmp_path / "by-hy3", "--quiet"))
    # from another working directory, with relative paths, as a user's old script would call it
    proc = assert_ok(run_python(CONVERT, "--input_dir", tiny_inner, "--output_dir", "by-script", "--workers", "2",
                                cwd=tmp_path))
    assert "wrote by-script" in proc.stderr
    assert files_bytes(tmp_path / "by-script") == files_bytes(tmp_path / "by-hy3")

    proc = assert_ok(run_python(CHECK, tmp_path / "by-script", "--spot-check", "3"))
    assert "layout:     outer" in proc.stdout and "result:     OK" in proc.stdout
    report = json.loads(assert_ok(run_python(CHECK, tmp_path / "by-script", "--json")).stdout)
    assert report["ok"] and len(report["spot_checked"]) == 1


def test_convert_script_errors_are_one_line(tiny_inner, tmp_path):
    assert_one_error(run_python(CONVERT, "--input_dir", tmp_path / "nowhere", "--output_dir", tmp_path / "out"),
                     str(tmp_path / "nowhere"), "config.json")
    proc = run_python(CONVERT, "--input_dir", tiny_inner)
    assert proc.returncode == 2 and "--output_dir" in proc.stderr and "Traceback" not in proc.stderr


def test_check_script_reports_problems_and_exits_1(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    rewrite(root, "model.layers.3.enorm.weight")
    proc = run_python(CHECK, root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "missing tensor model.layers.3.enorm.weight" in proc.stdout
