"""Offline HF <-> Megatron torch_dist conversion: byte-exact round trips, Megatron's own checkpoints,
resume after a kill, and clear errors. (Loading our checkpoints into the model under TP2/EP2/PP2/TP2+EP2
with parity is in test_megatron_parity.py.)"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess

import pytest

from conftest import assert_ok, assert_one_error, load_tensors, other_environment_hy3, run_cli, same_bits
from megatron_hy.convert.hf_to_mcore import hf_to_mcore
from megatron_hy.formats.manifest import MANIFEST
from megatron_hy.convert.mcore_to_hf import mcore_to_hf
from megatron_hy.formats.torch_dist import TRACKER
from megatron_hy.mcore_versions import NO_COMMON_PT, since
from megatron_hy.megatron.harness import run_distributed
from megatron_hy.tiny import TinySpec, write_tiny

pytestmark = [pytest.mark.slow, pytest.mark.megatron]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    spec = TinySpec(layers=4)
    inner = write_tiny(root / "inner", spec, "inner", seed=11)
    outer = write_tiny(root / "outer", spec, "outer", seed=11)
    return root, inner, outer


@pytest.fixture(scope="module")
def mcore(tiny):
    root, inner, _ = tiny
    out = root / "mcore"
    assert_ok(run_cli("convert", "hf-to-mcore", str(inner), str(out), "--quiet", timeout=600))
    return out


def same_checkpoint(a, b):
    same_checkpoint_tensors(load_tensors(a), load_tensors(b))


def same_checkpoint_tensors(ta: dict, tb: dict):
    assert sorted(ta) == sorted(tb)
    bad = [k for k in ta if not same_bits(ta[k], tb[k])]
    assert not bad, bad[:5]


def test_layout_on_disk(mcore):
    assert (mcore / TRACKER).read_text() == "1"
    it = mcore / "iter_0000001"
    assert json.loads((it / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    for name in (".metadata", "common.pt", "__0_0.distcp"):
        assert (it / name).exists()
    args = json.loads((mcore / "args.json").read_text())
    assert args["tuner_type"] == "full" and args["model"]
    manifest = json.loads((mcore / MANIFEST).read_text())
    import xxhash

    assert manifest["checksum"] == "xxh3_128" and manifest["files"]
    for rel, entry in manifest["files"].items():
        data = (mcore / rel).read_bytes()
        assert len(data) == entry["bytes"] and xxhash.xxh3_128(data).hexdigest() == entry["xxh3_128"]


@pytest.mark.parametrize("fmt", ["inner", "outer"])
def test_round_trip_from_inner_is_byte_exact(tiny, mcore, fmt, tmp_path):
    root, inner, outer = tiny
    out = tmp_path / "hf"
    assert_ok(run_cli("convert", "mcore-to-hf", str(mcore), str(out), "--hf-config", str(inner),
                      "--format", fmt, "--quiet", timeout=300))
    same_checkpoint(inner if fmt == "inner" else outer, out)
    assert (out / "config.json").read_text() == (inner / "config.json").read_text()
    import xxhash

    manifest = json.loads((out / MANIFEST).read_text())
    for rel, entry in manifest["files"].items():
        assert xxhash.xxh3_128((out / rel).read_bytes()).hexdigest() == entry["xxh3_128"]


def test_round_trip_from_outer_is_byte_exact(tiny, tmp_path):
    root, inner, outer = tiny
    hf_to_mcore(outer, tmp_path / "mc", quiet=True, workers=2)
    mcore_to_hf(tmp_path / "mc", tmp_path / "hf", inner, fmt="outer", quiet=True)
    same_checkpoint(outer, tmp_path / "hf")


def test_megatron_saved_checkpoint_converts_byte_exactly(tiny, tmp_path):
    """megatron-core's own dist_checkpointing.save under TP2 x EP2 (4 processes): column-split,
    row-split and per-expert chunks, fp32 params; converted back to the bf16 HF checkpoint exactly."""
    from mcore_jobs import save_with_megatron_from_hf

    root, inner, _ = tiny
    saved = tmp_path / "megatron-saved"
    run_distributed(save_with_megatron_from_hf, 4, str(inner), str(saved), 2, 1, 2)
    meta = pickle.loads((saved / "iter_0000001" / ".metadata").read_bytes())
    qkv = meta.state_dict_metadata["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert len(qkv.chunks) == 2  # really saved from two TP ranks
    mcore_to_hf(saved, tmp_path / "hf", inner, quiet=True)
    same_checkpoint(inner, tmp_path / "hf")


def test_megatron_trained_checkpoint_converts_exactly(megatron_world4, lora_base, tmp_path, capsys):
    """megatron-core trained this checkpoint (2 steps of its distributed optimizer and 1F1B schedule under
    PP2 x EP2 x DP2, conftest.megatron_world4) and saved it with the optimizer state beside the weights:
    mcore-to-hf skips that state, gives the trained weights byte for byte, and transformers on the result
    computes the trained Megatron model's logits."""
    import torch
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from megatron_helpers import assemble_hf
    from megatron_hy.convert.mcore_to_hf import is_optimizer_key
    from megatron_hy.formats.hf_checkpoint import HFCheckpoint
    from megatron_hy.megatron.parity import TOLERANCE, compare
    from megatron_hy.reference import reference_logits
    from megatron_hy.dtypes import torch_dtype

    w = megatron_world4
    meta = pickle.loads((w.trained / "iter_0000002" / ".metadata").read_bytes())
    optim = [k for k in meta.state_dict_metadata if is_optimizer_key(k)]
    # the distributed optimizer's own buffers, one part per chained optimizer (dense and expert parameters)
    assert {k.split(".")[0] for k in optim} == {"chained_0", "chained_1"}
    assert any(".optimizer.distributed." in k and k.endswith(".exp_avg") for k in optim)
    assert all(len(r["losses"]) == w.train_job.steps for r in w.train)

    # megatron-core 0.19 keeps the common state inside the DCP checkpoint and writes no common.pt
    assert (w.trained / "iter_0000002" / "common.pt").exists() != since(NO_COMMON_PT)

    out = tmp_path / "hf"
    report = mcore_to_hf(w.trained, out, lora_base)  # what `hy3 convert mcore-to-hf` runs
    n_optim_tensors = sum(isinstance(meta.state_dict_metadata[k], TensorStorageMetadata) for k in optim)
    assert report["optimizer_tensors_skipped"] == n_optim_tensors
    assert f"skipped {n_optim_tensors} optimizer-state tensors" in capsys.readouterr().err

    pieces = [p for r in w.train for p in r["pieces"]]
    held = {}
    for p in pieces:  # every replica of a piece (data-parallel ranks) holds the same trained values
        region = (p.key, p.prepend, p.slices)
        assert same_bits(held.setdefault(region, p.data), p.data), region
    base = HFCheckpoint(lora_base)
    trained = assemble_hf(pieces, base.config, None, {n: torch_dtype(base.dtype(n)) for n in base.names()})
    same_checkpoint_tensors(trained, load_tensors(out))
    # training moved every weight; the router's expert bias is frozen (update rate 0) and stays as it was
    unchanged = sorted(n for n in trained if same_bits(trained[n], base.read(n)))
    assert unchanged == sorted(n for n in trained if n.endswith("mlp.expert_bias"))

    owner = next(r for r in w.train if "logits" in r)
    tokens = torch.tensor(w.train_job.tokens)
    ref, ref_mtp = reference_logits(out, tokens)
    assert compare(owner["logits"], ref)[1] <= TOLERANCE
    assert len(owner["mtp"]) == len(ref_mtp) == 1
    assert compare(owner["mtp"][0], ref_mtp[0])[1] <= TOLERANCE
    assert compare(owner["logits"], reference_logits(lora_base, tokens)[0])[1] > 100 * TOLERANCE  # it did train

    # the other supported megatron-core release's hy3 converts the same checkpoint to the same bytes
    again = tmp_path / "hf-other-release"
    assert_ok(subprocess.run([str(other_environment_hy3()), "convert", "mcore-to-hf", str(w.trained), str(again),
                              "--hf-config", str(lora_base), "--quiet"], capture_output=True, text=True, timeout=600))
    same_checkpoint(out, again)


def test_resume_after_kill(tiny, mcore, tmp_path):
    root, inner, _ = tiny
    out = tmp_path / "mc"
    killed = run_cli("convert", "hf-to-mcore", str(inner), str(out), "--workers", "1", "--max-file-size", "100KB",
                     "--quiet", kill_after_bytes=300000, timeout=600)
    assert killed.returncode != 0 and not out.exists()
    partial = out.with_name(out.name + ".partial")
    finished = list((partial / "iter_0000001").glob("*.distcp"))
    assert partial.exists() and finished, "expected some finished data files before the kill"
    again = assert_ok(run_cli("convert", "hf-to-mcore", str(inner), str(out), "--workers", "1", "--max-file-size",
                              "100KB", timeout=600))
    assert "resuming" in again.stderr
    assert not partial.exists()
    mcore_to_hf(out, tmp_path / "hf", inner, quiet=True)
    same_checkpoint(inner, tmp_path / "hf")

    hf_out = tmp_path / "hf2"
    killed = run_cli("convert", "mcore-to-hf", str(mcore), str(hf_out), "--hf-config", str(inner),
                     "--max-shard-size", "150KB", "--workers", "1", kill_after_bytes=300000)
    assert killed.returncode != 0 and not hf_out.exists()
    again = assert_ok(run_cli("convert", "mcore-to-hf", str(mcore), str(hf_out), "--hf-config", str(inner),
                              "--max-shard-size", "150KB", "--workers", "1"))
    assert "resuming" in again.stderr
    same_checkpoint(inner, hf_out)


def test_mismatched_config_is_refused(tiny, mcore, tmp_path):
    other = write_tiny(tmp_path / "other", TinySpec(layers=3), seed=1)
    assert_one_error(run_cli("convert", "mcore-to-hf", str(mcore), str(tmp_path / "x"), "--hf-config", str(other)),
                     "decoder.layers.3")
    assert not (tmp_path / "x").exists()


def test_missing_tensor_is_named(mcore, tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mcore, broken)
    meta_path = broken / "iter_0000001" / ".metadata"
    meta = pickle.loads(meta_path.read_bytes())
    del meta.state_dict_metadata["decoder.layers.2.mlp.router.weight"]
    meta_path.write_bytes(pickle.dumps(meta))
    assert_one_error(run_cli("convert", "mcore-to-hf", str(broken), str(tmp_path / "x"), "--hf-config", str(tiny[1])),
                     "missing tensor decoder.layers.2.mlp.router.weight")


def test_not_a_checkpoint(tiny, tmp_path):
    assert_one_error(run_cli("convert", "mcore-to-hf", str(tiny[1]), str(tmp_path / "x"), "--hf-config", str(tiny[1])),
                     "not a Megatron torch_dist checkpoint")
    assert_one_error(run_cli("convert", "hf-to-mcore", str(tmp_path), str(tmp_path / "y")), "config.json")
