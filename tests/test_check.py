"""`hy3 check`: clean checkpoints pass; each kind of damage is reported and exits 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import copy_checkpoint, first_shard, read_index, rewrite, run_cli


def check_json(root: Path, *flags: str) -> tuple[int, dict]:
    proc = run_cli("check", root, "--json", *flags)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("fixture, layout", [("tiny_inner", "inner"), ("tiny_outer", "outer"),
                                             ("tiny_tencent", "inner")])
def test_clean_checkpoints_pass(fixture, layout, request):
    root = request.getfixturevalue(fixture)
    rc, rep = check_json(root, "--spot-check", "100")
    assert rc == 0 and rep["ok"] is True and rep["errors"] == []
    assert rep["layout"] == layout and rep["tensors"] == len(read_index(root)["weight_map"])
    assert rep["spot_checked"] == sorted(set(read_index(root)["weight_map"].values()))
    assert rep["total_bytes"] == read_index(root)["metadata"]["total_size"]


def test_human_report_names_each_problem(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    rewrite(root, "model.layers.0.mlp.down_proj.weight")
    proc = run_cli("check", root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "result:     2 problem(s)" in proc.stdout
    assert "  - missing tensor model.layers.0.mlp.down_proj.weight (expected by config.json)" in proc.stdout


# Each damage returns a text that one reported error must contain.

def missing_key(root):
    rewrite(root, "model.layers.3.eh_proj.weight")
    return "missing tensor model.layers.3.eh_proj.weight (expected by config.json)"


def unexpected_key(root):
    import torch
    from safetensors.torch import load_file, save_file

    key = "model.layers.1.mlp.foo.weight"
    shard = first_shard(root)
    save_file(load_file(shard) | {key: torch.zeros(2, dtype=torch.bfloat16)}, shard, metadata={"format": "pt"})
    index = read_index(root)
    index["weight_map"][key] = shard.name
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return f"unexpected tensor {key} (config.json does not describe it)"


def wrong_shape(root):
    import torch

    key = "model.layers.2.mlp.experts.3.down_proj.weight"
    shard = rewrite(root, key, torch.zeros(64, 16, dtype=torch.bfloat16))
    return f"{shard.name}: {key}: shape [64, 16], expected [64, 32] from config.json"


def wrong_dtype(root):
    import torch

    key = "model.layers.0.self_attn.k_proj.weight"
    shard = rewrite(root, key, torch.zeros(32, 64, dtype=torch.float32))
    return f"{shard.name}: {key}: dtype F32, the checkpoint's other weights are BF16"


def missing_shard(root):
    shard = first_shard(root)
    shard.unlink()
    return f"{shard}: missing shard file"


def empty_shard(root):
    shard = first_shard(root)
    shard.write_bytes(b"")
    return f"{shard}: empty or truncated safetensors file (0 bytes)"


def orphan_shard(root):
    import shutil

    shutil.copy(first_shard(root), root / "model-00009-of-00009.safetensors")
    return f"{root / 'model-00009-of-00009.safetensors'}: orphan shard file, not referenced by model.safetensors.index.json"


def key_not_in_its_file(root):
    from safetensors.torch import load_file, save_file

    key = "model.layers.1.self_attn.v_proj.weight"
    shard = root / read_index(root)["weight_map"][key]
    tensors = load_file(shard)
    del tensors[key]
    save_file(tensors, shard, metadata={"format": "pt"})  # the index still lists it there
    return f"{shard}: index lists {key} in this file, but the file does not contain it"


def nan_in_a_tensor(root):
    import torch

    key = "model.layers.2.mlp.experts.6.up_proj.weight"
    value = torch.zeros(32, 64, dtype=torch.bfloat16)
    value[3, 5] = float("nan")
    value[7, 1] = float("-inf")
    shard = rewrite(root, key, value)
    return f"{shard.name}: {key}: 2 NaN/Inf values"


def inf_in_fp32_bias(root):
    import torch

    key = "model.layers.1.mlp.expert_bias"
    value = torch.zeros(8, dtype=torch.float32)
    value[4] = float("inf")
    shard = rewrite(root, key, value)
    return f"{shard.name}: {key}: 1 NaN/Inf values"


def wrong_total_size(root):
    index = read_index(root)
    real = index["metadata"]["total_size"]
    index["metadata"]["total_size"] = real + 2
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return f"total_size is {real + 2}, expected {real}"


@pytest.mark.parametrize("damage", [missing_key, unexpected_key, wrong_shape, wrong_dtype, missing_shard,
                                    empty_shard, orphan_shard, key_not_in_its_file, nan_in_a_tensor,
                                    inf_in_fp32_bias, wrong_total_size])
def test_each_problem_is_reported_and_exits_1(damage, tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    expected = damage(root)
    rc, rep = check_json(root, "--spot-check", "100")
    assert rc == 1 and rep["ok"] is False
    assert any(expected in e for e in rep["errors"]), rep["errors"]


def test_nan_outside_the_spot_checked_shards_is_not_read(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    nan_in_a_tensor(root)
    rc, rep = check_json(root, "--spot-check", "0")
    assert rc == 0 and rep["spot_checked"] == []


def test_missing_config_is_reported(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    (root / "config.json").unlink()
    rc, rep = check_json(root)
    assert rc == 1 and rep["errors"] == [f"{root / 'config.json'}: not found (a Hy3 checkpoint directory needs config.json)"]


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_nan_inf_count_matches_torch_for_every_bit_pattern(dtype, tmp_path):
    """The checker counts NaN/Inf from bit patterns without torch; torch.isfinite is the reference."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from megatron_hy.dtypes import ITEMSIZE, torch_dtype
    from megatron_hy.formats.hf_checkpoint import count_nonfinite
    from megatron_hy.formats.safetensors_io import read_header

    size = ITEMSIZE[dtype]
    raw = np.frombuffer(os.urandom(size * 4096), dtype="u1")
    if size <= 2:  # and every 8- or 16-bit pattern once
        raw = np.concatenate([raw, np.arange(1 << (8 * size), dtype=f"<u{size}").view("u1")])
    t = torch.from_numpy(raw.copy()).view(torch_dtype(dtype))
    save_file({"x": t}, tmp_path / "x.safetensors")
    (info,) = read_header(tmp_path / "x.safetensors")[0].values()
    assert count_nonfinite(info) == int((~torch.isfinite(t.to(torch.float64))).sum())


# --- every shard by default (issue 21) -------------------------------------------------------------

def nan_in_second_shard(root: Path) -> tuple[str, str]:
    """A NaN in a tensor of shard 2 of 5: a shard that sampling first, middle and last shard never reads."""
    import torch
    from safetensors.torch import load_file

    shards = sorted(set(read_index(root)["weight_map"].values()))
    assert len(shards) == 5
    key = next(k for k, v in sorted(load_file(root / shards[1]).items()) if v.dtype == torch.bfloat16 and v.dim() == 2)
    value = load_file(root / shards[1])[key].clone()
    value[0, 0] = float("nan")
    rewrite(root, key, value)
    return shards[1], key


def test_nan_in_any_shard_fails_by_default_naming_tensor_and_shard(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    shard, key = nan_in_second_shard(root)
    proc = run_cli("check", root)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"  - {shard}: {key}: 1 NaN/Inf values" in proc.stdout
    assert "result:     1 problem(s) (NaN/Inf: every shard read, 5 shard(s)" in proc.stdout
    assert "[check NaN/Inf]" in proc.stderr and "(100%)" in proc.stderr   # progress, in bytes, on stderr
    rc, rep = check_json(root)
    assert rc == 1 and rep["nonfinite_check"]["every_shard"] and rep["nonfinite_check"]["shards_read"] == 5
    assert rep["spot_checked"] == sorted(set(read_index(root)["weight_map"].values()))


def test_spot_check_samples_only_on_request_and_says_so(tiny_inner, tmp_path):
    root = copy_checkpoint(tiny_inner, tmp_path / "c")
    nan_in_second_shard(root)
    proc = run_cli("check", root, "--spot-check", "3", "--quiet")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "result:     OK (NaN/Inf: only 3 of 5 shards read (--spot-check)" in proc.stdout
    assert "the others were not checked" in proc.stdout
    rc, rep = check_json(root, "--spot-check", "3")
    assert rc == 0 and rep["nonfinite_check"] == {"shards_read": 3, "shards_with_tensors": 5,
                                                   "bytes_read": rep["nonfinite_check"]["bytes_read"],
                                                   "every_shard": False}


def test_model_flag_names_the_checkpoint_too(tiny_inner):
    rc, rep = check_json(tiny_inner, "--quiet")
    proc = run_cli("check", "--model", tiny_inner, "--json", "--quiet")
    assert proc.returncode == rc == 0 and json.loads(proc.stdout) == rep
