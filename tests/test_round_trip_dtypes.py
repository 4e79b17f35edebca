"""HF -> torch_dist -> HF keeps every tensor's dtype: a router expert bias stored in bf16 comes back bf16
(hy3-manifest.json records the HF dtypes); a checkpoint our manifest does not describe gets config.json's
dtype for weights and fp32 for the bias, as transformers keeps it. Reading in small row blocks is exact."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import load_tensors, same_bits
from megatron_hy.formats.manifest import MANIFEST
from megatron_hy.convert.mcore_to_hf import mcore_to_hf
from megatron_hy.formats.torch_dist import TRACKER

pytestmark = pytest.mark.megatron

BIAS = ".mlp.expert_bias"


def differing(a, b) -> list[str]:
    ta, tb = load_tensors(a), load_tensors(b)
    assert sorted(ta) == sorted(tb)
    return [k for k in ta if not same_bits(ta[k], tb[k])]


def test_bf16_expert_bias_comes_back_bf16_byte_for_byte(bf16_bias_round_trip):
    import torch

    hf, mcore, back = bf16_bias_round_trip
    src = load_tensors(hf)
    biases = [k for k in src if k.endswith(BIAS)]
    assert biases and all(src[k].dtype == torch.bfloat16 for k in biases)
    assert differing(hf, back) == []  # same_bits compares the dtype too
    record = json.loads((mcore / MANIFEST).read_text())["source"]["dtypes"]
    assert record == {"default": "BF16", "tensors": {}}


def test_megatron_saved_iteration_in_our_directory_gets_fp32_bias(bf16_bias_round_trip, tmp_path, capsys):
    """Training resumed from our checkpoint saves iter_0000002 beside it: the manifest describes iteration 1
    only, so iteration 2 is converted as any Megatron-saved checkpoint is."""
    import torch

    hf, mcore, _ = bf16_bias_round_trip
    trained = shutil.copytree(mcore, tmp_path / "mcore")
    shutil.copytree(trained / "iter_0000001", trained / "iter_0000002")
    (trained / TRACKER).write_text("2")
    mcore_to_hf(trained, tmp_path / "hf", hf)
    assert "describes other data files" in capsys.readouterr().err
    src, out = load_tensors(hf), load_tensors(tmp_path / "hf")
    assert sorted(k for k in src if not same_bits(src[k], out[k])) == sorted(k for k in src if k.endswith(BIAS))
    for k in src:
        if k.endswith(BIAS):
            assert out[k].dtype == torch.float32 and torch.equal(out[k], src[k].float())


def test_small_row_blocks_are_byte_exact(bf16_bias_round_trip, tmp_path):
    """Row blocks of at most 500 bytes (64 MiB at real size): every tensor assembled from many reads."""
    hf, mcore, _ = bf16_bias_round_trip
    mcore_to_hf(mcore, tmp_path / "hf", hf, workers=3, max_shard_size="100KB", quiet=True, chunk_bytes=500)
    assert differing(hf, tmp_path / "hf") == []
