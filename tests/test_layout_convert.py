"""`hy3 convert inner-to-outer | outer-to-inner`: exact bytes, transformers-loadable, resumable, strict on input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from conftest import (assert_ok, assert_one_error, copy_checkpoint, files_bytes, first_shard, load_tensors,
                      read_index, rewrite, run_cli, same_bits)
from megatron_hy.config import load_config
from megatron_hy.mapping import LAYER, expected_keys
from megatron_hy.outputs import HF_CHECKPOINT, MARKER, written_kind


def convert(direction: str, src: Path, out: Path, *flags: str):
    return assert_ok(run_cli("convert", direction, src, out, "--quiet", *flags))


def assert_same_tensors(a: Path, b: Path) -> int:
    ta, tb = load_tensors(a), load_tensors(b)
    assert set(ta) == set(tb)
    different = [k for k in ta if not same_bits(ta[k], tb[k])]
    assert not different, different[:5]
    return len(ta)


@pytest.fixture(scope="module")
def converted_outer(tiny_inner, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("convert") / "outer"
    convert("inner-to-outer", tiny_inner, out)
    return out


# --- exactness ---------------------------------------------------------------------------------------

def test_inner_to_outer_equals_the_model_fused_by_torch(converted_outer, tiny_outer):
    """tiny_outer is the same model fused with torch.stack/cat by make-tiny; the converter only moves bytes."""
    cfg = load_config(converted_outer)
    assert assert_same_tensors(converted_outer, tiny_outer) == len(expected_keys(cfg, "outer"))
    assert_ok(run_cli("check", converted_outer, "--spot-check", "100"))


def test_transformers_loads_the_outer_output_bit_identical_to_the_inner_checkpoint(tiny_inner, converted_outer):
    import torch
    from transformers import HYV3ForCausalLM

    models = {}
    for name, root in (("inner", tiny_inner), ("outer", converted_outer)):
        model, info = HYV3ForCausalLM.from_pretrained(root, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], (name, info)
        mtp = LAYER.format(i=load_config(root).num_layers)
        assert all(k.startswith(mtp) for k in info["unexpected_keys"]), info["unexpected_keys"]
        models[name] = model.state_dict()
    a, b = models["inner"], models["outer"]
    assert set(a) == set(b)
    assert [k for k in a if not same_bits(a[k], b[k])] == []
    # and what was loaded is the checkpoint's bytes, not a fresh initialization
    src = load_tensors(tiny_inner)
    p = LAYER.format(i=1) + "mlp.experts."
    gate_up = torch.stack([torch.cat([src[f"{p}{e}.gate_proj.weight"], src[f"{p}{e}.up_proj.weight"]])
                           for e in range(load_config(tiny_inner).num_experts)])
    assert same_bits(b[p + "gate_up_proj"], gate_up)
    assert same_bits(b["model.embed_tokens.weight"], src["model.embed_tokens.weight"])


def test_inner_outer_inner_is_byte_identical_per_tensor(tiny_inner, converted_outer, tmp_path):
    convert("outer-to-inner", converted_outer, tmp_path / "inner")
    assert assert_same_tensors(tiny_inner, tmp_path / "inner") == len(expected_keys(load_config(tiny_inner), "inner"))


def test_outer_inner_outer_is_byte_identical_per_tensor(tiny_inner, tiny_outer, tmp_path):
    # small shards on the way through, so experts of one layer straddle several inner shards
    convert("outer-to-inner", tiny_outer, tmp_path / "inner", "--max-shard-size", "40KB", "--workers", "3")
    weight_map = read_index(tmp_path / "inner")["weight_map"]
    layer1 = {f for k, f in weight_map.items() if k.startswith("model.layers.1.mlp.experts.")}
    assert len(layer1) > 1
    assert_same_tensors(tiny_inner, tmp_path / "inner")
    convert("inner-to-outer", tmp_path / "inner", tmp_path / "outer")
    assert_same_tensors(tiny_outer, tmp_path / "outer")


def test_straddling_experts_and_mtp_layer_are_fused(tiny_inner, converted_outer):
    import torch

    cfg = load_config(tiny_inner)
    weight_map = read_index(tiny_inner)["weight_map"]
    straddling = [i for i in cfg.moe_layers + cfg.mtp_layers
                  if len({f for k, f in weight_map.items() if k.startswith(LAYER.format(i=i) + "mlp.experts.")}) > 1]
    assert straddling
    src, out = load_tensors(tiny_inner), load_tensors(converted_outer)
    for i in straddling + cfg.mtp_layers:
        p = LAYER.format(i=i) + "mlp."
        for e in range(cfg.num_experts):
            gate, up, down = (src[f"{p}experts.{e}.{n}_proj.weight"] for n in ("gate", "up", "down"))
            assert same_bits(out[p + "experts.gate_up_proj"][e], torch.cat([gate, up]))
            assert same_bits(out[p + "experts.down_proj"][e], down)
        assert same_bits(out[p + "gate.weight"], src[p + "router.gate.weight"])
        assert same_bits(out[p + "e_score_correction_bias"], src[p + "expert_bias"])
    mtp = LAYER.format(i=cfg.mtp_layers[0])
    for name in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "final_layernorm.weight"):
        assert same_bits(out[mtp + name], src[mtp + name])


# --- the output directory ----------------------------------------------------------------------------

def test_index_total_size_and_other_files(tiny_inner, tmp_path):
    src = copy_checkpoint(tiny_inner, tmp_path / "src")
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    (src / "extra").mkdir()
    (src / "extra" / "notes.txt").write_text("kept")
    convert("inner-to-outer", src, tmp_path / "out", "--max-shard-size", "100KB")
    out = tmp_path / "out"
    index = read_index(out)
    tensors = load_tensors(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert index["metadata"]["total_size"] == read_index(src)["metadata"]["total_size"]
    assert set(index["weight_map"]) == set(tensors)
    assert set(index["weight_map"].values()) == {p.name for p in out.glob("*.safetensors")}
    got, want = files_bytes(out), files_bytes(src)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "extra/notes.txt"):
        assert got[name] == want[name], name
    leftovers = [n for n in got if n.endswith(".tmp") or n.startswith(".") and n != MARKER]
    assert not leftovers and not (tmp_path / "out.partial").exists()
    assert written_kind(out) == HF_CHECKPOINT


def test_tencent_spelled_config_is_carried_over_verbatim(tiny_tencent, tiny_outer, tmp_path):
    convert("inner-to-outer", tiny_tencent, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_bytes() == (tiny_tencent / "config.json").read_bytes()
    assert_same_tensors(tmp_path / "out", tiny_outer)


def test_existing_output_needs_overwrite(tiny_inner, converted_outer, tmp_path):
    out = copy_checkpoint(converted_outer, tmp_path / "out")  # a checkpoint hy3 wrote
    (out / "old.txt").write_text("old")
    assert_one_error(run_cli("convert", "inner-to-outer", tiny_inner, out), str(out), "already exists", "--overwrite")
    assert (out / "old.txt").read_text() == "old"
    convert("inner-to-outer", tiny_inner, out, "--overwrite")
    assert not (out / "old.txt").exists()
    assert files_bytes(out) == files_bytes(converted_outer)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_never_replaces_a_directory_hy3_did_not_write(tiny_inner, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert_one_error(run_cli("convert", "inner-to-outer", tiny_inner, out, "--overwrite"), str(out),
                     "hy3 did not write it", "even with --overwrite")
    assert files_bytes(out) == {"old.txt": b"old"}


def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny_inner, tmp_path):
    flags = ("--max-shard-size", "60KB", "--workers", "1")
    convert("inner-to-outer", tiny_inner, tmp_path / "reference", *flags)
    total = read_index(tmp_path / "reference")["metadata"]["total_size"]
    out, partial = tmp_path / "out", tmp_path / "out.partial"

    killed = run_cli("convert", "inner-to-outer", tiny_inner, out, "--quiet", *flags,
                     kill_after_bytes=total // 2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not out.exists() and partial.is_dir()
    done = {p.name: p.stat() for p in partial.glob("*.safetensors")}
    n_shards = len(list((tmp_path / "reference").glob("*.safetensors")))
    assert 1 <= len(done) < n_shards

    resumed = assert_ok(run_cli("convert", "inner-to-outer", tiny_inner, out, *flags))
    assert f"{len(done)} of {n_shards} shards already written" in resumed.stderr
    assert files_bytes(out) == files_bytes(tmp_path / "reference")
    assert not partial.exists()
    for name, st in done.items():  # finished shards were kept, not rewritten
        now = (out / name).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)


def test_a_different_plan_starts_over(tiny_inner, converted_outer, tmp_path):
    out = tmp_path / "out"
    killed = run_cli("convert", "inner-to-outer", tiny_inner, out, "--quiet", "--max-shard-size", "60KB",
                     "--workers", "1", kill_after_bytes=200000)
    assert killed.returncode == -signal.SIGKILL
    rerun = assert_ok(run_cli("convert", "inner-to-outer", tiny_inner, out))
    assert "resuming" not in rerun.stderr
    assert files_bytes(out) == files_bytes(converted_outer)


# --- bad input: one readable line, non-zero exit, nothing written -----------------------------------

def truncate(root):
    shard = first_shard(root)
    os.truncate(shard, shard.stat().st_size - 100)
    return shard.name, "truncated"


def corrupt_header(root):
    shard = first_shard(root)
    with open(shard, "r+b") as f:
        f.seek(8)
        f.write(b"#garbage#")
    return shard.name, "corrupt safetensors header"


def missing_expert(root):
    key = "model.layers.2.mlp.experts.5.up_proj.weight"
    rewrite(root, key)
    return "missing tensor " + key, "expected by config.json"


def wrong_shape(root):
    import torch

    key = "model.layers.1.self_attn.q_proj.weight"
    shard = rewrite(root, key, torch.zeros(32, 64, dtype=torch.bfloat16))
    return f"{shard.name}: {key}: shape [32, 64], expected [64, 64]", "config.json"


def config_mismatch(root):
    conf = json.loads((root / "config.json").read_text())
    conf["num_experts"] = 16
    (root / "config.json").write_text(json.dumps(conf))
    return "does not match its config.json", "missing tensor model.layers.1.mlp.experts.8.gate_proj.weight"


def missing_index(root):
    (root / "model.safetensors.index.json").unlink()
    return "no model.safetensors.index.json", str(root)


def missing_shard(root):
    shard = first_shard(root)
    shard.unlink()
    return str(shard), "missing shard file"


def mixed_layout(root):
    """Layer 2's experts fused (outer) next to the per-expert (inner) tensors of the other layers."""
    import torch
    from safetensors.torch import save_file

    src, p = load_tensors(root), "model.layers.2.mlp.experts."
    fused = torch.stack([torch.cat([src[f"{p}{e}.gate_proj.weight"], src[f"{p}{e}.up_proj.weight"]]) for e in range(8)])
    save_file({p + "gate_up_proj": fused}, root / "extra.safetensors")
    index = read_index(root)
    index["weight_map"][p + "gate_up_proj"] = "extra.safetensors"
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return "mixes inner (per-expert) and outer (fused) expert keys", str(root)


@pytest.mark.parametrize("damage", [truncate, corrupt_header, missing_expert, wrong_shape, config_mismatch,
                                    missing_index, missing_shard, mixed_layout])
def test_bad_input_fails_with_one_line_and_writes_nothing(damage, tiny_inner, tmp_path):
    src = copy_checkpoint(tiny_inner, tmp_path / "src")
    expected = damage(src)
    out = tmp_path / "out"
    assert_one_error(run_cli("convert", "inner-to-outer", src, out), *expected)
    assert not out.exists() and not (tmp_path / "out.partial").exists()


def test_unwritable_output_fails_with_one_line(tiny_inner, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "out"
    assert_one_error(run_cli("convert", "inner-to-outer", tiny_inner, out), str(out), "cannot write output here")


@pytest.mark.parametrize("where", ["same", "parent"])
def test_output_that_is_or_contains_the_input_is_refused(where, tiny_inner, tmp_path):
    src = copy_checkpoint(tiny_inner, tmp_path / "models" / "src")
    out = src if where == "same" else tmp_path / "models"
    before = files_bytes(tmp_path / "models")
    assert_one_error(run_cli("convert", "inner-to-outer", src, out, "--overwrite"), str(out), "must differ from the input")
    assert files_bytes(tmp_path / "models") == before


def test_workers_must_be_positive(tiny_inner, tmp_path):
    assert_one_error(run_cli("convert", "inner-to-outer", tiny_inner, tmp_path / "o", "--workers", "0"),
                     "--workers 0", "at least 1")


def test_benchmark_builder_writes_a_checkpoint_that_checks_and_converts(tmp_path):
    """benchmarks/_synthetic.py at tiny widths: the benchmark's input is a valid straddling Hy3."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._synthetic import write_synthetic
    from conftest import tiny_config

    built = write_synthetic(tmp_path / "syn", tiny_config(), shards=5)
    assert built["shards"] == 5 and built["straddling_layers"]
    assert_ok(run_cli("check", tmp_path / "syn", "--spot-check", "5"))
    convert("inner-to-outer", tmp_path / "syn", tmp_path / "out")
    assert_ok(run_cli("check", tmp_path / "out"))
