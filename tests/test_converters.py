"""The scripts in converters/: each one's --help, and one tiny conversion each, run as a user runs them.
(Tencent's two drop-ins are also tested flag by flag in test_cli.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, assert_ok, files_bytes, load_tensors, run_python, same_bits

SCRIPTS = {  # script -> a flag its --help must explain
    "convert_ckpt_to_outer.py": "--input_dir",
    "check_converted.py": "--spot-check",
    "hf_to_mcore.py": "--padded-vocab",
    "mcore_to_hf.py": "--hf-config",
    "merge_lora.py": "--adapter",
}


def script(name: str):
    return REPO / "converters" / name


def test_every_script_is_listed():
    assert sorted(p.name for p in (REPO / "converters").glob("*.py")) == sorted(SCRIPTS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help(name, tmp_path):
    proc = assert_ok(run_python(script(name), "--help", cwd=tmp_path))
    assert proc.stdout.startswith(f"usage: {name}"), proc.stdout
    assert SCRIPTS[name] in proc.stdout


def test_without_the_package_says_how_to_install(tmp_path):
    # -I -S: no site-packages and no PYTHONPATH, so megatron_hy cannot be imported
    proc = subprocess.run([sys.executable, "-I", "-S", str(script("hf_to_mcore.py")), "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "megatron-hy is not installed" in proc.stderr and "make setup" in proc.stderr


@pytest.mark.megatron
def test_hf_to_mcore_and_back(tiny_inner, tmp_path):
    assert_ok(run_python(script("hf_to_mcore.py"), tiny_inner, "mcore", "--quiet", cwd=tmp_path, timeout=300))
    assert (tmp_path / "mcore" / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert_ok(run_python(script("mcore_to_hf.py"), "mcore", "hf", "--hf-config", tiny_inner, "--quiet", cwd=tmp_path))
    want, got = load_tensors(tiny_inner), load_tensors(tmp_path / "hf")
    assert sorted(got) == sorted(want)
    assert all(same_bits(got[k], want[k]) for k in want)


def test_merge_lora_matches_hy3_lora_merge(tiny_inner, tmp_path):
    from megatron_hy.lora.merge import merge_lora
    from megatron_hy.lora.tiny import write_tiny_adapter

    base = tiny_inner
    adapter = write_tiny_adapter(base, tmp_path / "adapter", "mcore", seed=2)
    merge_lora(base, adapter, tmp_path / "in-process", quiet=True)
    proc = assert_ok(run_python(script("merge_lora.py"), "--base", base, "--adapter", adapter, "by-script",
                                cwd=tmp_path))
    assert "wrote by-script" in proc.stderr
    assert files_bytes(tmp_path / "by-script") == files_bytes(tmp_path / "in-process")
