"""The benchmarks' check of their outputs (benchmarks/_common.py `verify`, run by bench_layout.py after
every conversion and by bench_dist_ckpt.py after every HF -> torch_dist -> HF): it passes on real outputs
and stops the run, naming the tensor, on a corrupted one: one changed byte, right-sized zeros (which
`hy3 check` accepts), or the right values in another dtype."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from conftest import REPO, rewrite
from megatron_hy.convert.layout import convert_layout
from megatron_hy.formats.hf_checkpoint import HFCheckpoint


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overwrite(root, name: str, data: bytes | None = None) -> None:
    """Replace the bytes of logical tensor `name` in place (None: one byte in its middle flipped)."""
    file, start, nbytes = HFCheckpoint(root).source(name)
    with open(file, "r+b") as f:
        if data is None:
            start += nbytes // 2
            f.seek(start)
            data = bytes([f.read(1)[0] ^ 0x01])
        f.seek(start)
        f.write(data)


def test_layout_outputs_pass_and_a_flipped_byte_or_zeros_fail(bench, tiny_inner, tmp_path):
    convert_layout(tiny_inner, tmp_path / "outer", "outer", quiet=True)
    convert_layout(tmp_path / "outer", tmp_path / "inner", "inner", quiet=True)
    expected = bench.tensor_digests(tiny_inner)
    assert bench.verify(expected, tmp_path / "outer", "inner_to_outer") == len(expected)
    assert bench.verify(expected, tmp_path / "inner", "outer_to_inner") == len(expected)

    up = "model.layers.1.mlp.experts.3.up_proj.weight"  # inside the fused gate_up_proj of the outer output
    overwrite(shutil.copytree(tmp_path / "outer", tmp_path / "flipped"), up)
    with pytest.raises(SystemExit, match=f"1 of {len(expected)} tensors; first: {up} holds other bytes"):
        bench.verify(expected, tmp_path / "flipped", "inner_to_outer")

    emb = "model.embed_tokens.weight"
    zeros = shutil.copytree(tmp_path / "inner", tmp_path / "zeros")
    overwrite(zeros, emb, bytes(HFCheckpoint(zeros).source(emb)[2]))
    with pytest.raises(SystemExit, match=f"first: {emb} holds other bytes"):
        bench.verify(expected, zeros, "outer_to_inner")


def test_dist_round_trip_passes_and_a_changed_dtype_or_byte_fails(bench, bf16_bias_round_trip, tmp_path):
    hf, _, back = bf16_bias_round_trip
    expected = bench.tensor_digests(hf)
    assert bench.verify(expected, back, "hf_to_mcore + mcore_to_hf") == len(expected)

    bias = "model.layers.1.mlp.expert_bias"
    fp32 = shutil.copytree(back, tmp_path / "fp32")  # what mcore-to-hf wrote before it kept the dtype
    rewrite(fp32, bias, HFCheckpoint(back).read(bias).float())
    with pytest.raises(SystemExit, match=f"first: {bias} is F32 \\[8\\], the input's is BF16 \\[8\\]"):
        bench.verify(expected, fp32, "hf_to_mcore + mcore_to_hf")

    flipped = shutil.copytree(back, tmp_path / "flipped")
    overwrite(flipped, "model.norm.weight")
    with pytest.raises(SystemExit, match="first: model.norm.weight holds other bytes"):
        bench.verify(expected, flipped, "hf_to_mcore + mcore_to_hf")
