"""Reading config.json in either spelling; refusing configs that are not Hy3 or contradict themselves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import assert_one_error, run_cli
from megatron_hy.config import config_from_dict, load_config
from megatron_hy.errors import Hy3Error
from megatron_hy.mapping import expected_keys, logical_tensors

BUNDLED = Path(__file__).resolve().parent.parent / "megatron_hy" / "assets" / "hy3_config.json"


def write_config(root: Path, d: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(d))
    return root


def test_both_spellings_read_to_the_same_config(tiny_inner, tiny_tencent):
    hf = json.loads((tiny_inner / "config.json").read_text())
    tencent = json.loads((tiny_tencent / "config.json").read_text())
    assert "mlp_layer_types" in hf and "first_k_dense_replace" not in hf
    assert "first_k_dense_replace" in tencent and "mlp_layer_types" not in tencent
    assert "expert_hidden_dim" in tencent and "moe_intermediate_size" not in tencent
    a, b = load_config(tiny_inner), load_config(tiny_tencent)
    assert a == b
    assert a.layer_types == ("dense", "sparse", "sparse") and a.num_mtp_layers == 1


def test_transformers_and_tencent_spellings_of_the_published_config_agree():
    from transformers import HYV3Config

    cfg = load_config(BUNDLED)
    hf = HYV3Config(**cfg.to_transformers(), dtype=cfg.dtype).to_dict()
    assert config_from_dict(hf, "transformers") == cfg
    assert config_from_dict(cfg.to_tencent(), "tencent") == cfg


def test_published_config_describes_47138_tensors_and_597_6_gb():
    cfg = load_config(BUNDLED)
    tensors = list(logical_tensors(cfg))
    assert len(tensors) == 47_138 == len(expected_keys(cfg, "inner"))
    assert round(sum(math.prod(t.shape) for t in tensors) * 2 / 1e9, 1) == 597.6
    # the experts of the 79 MoE decoder layers dominate: 79 x 192 x 3 x 4096 x 1536 = 286.3B parameters
    experts = sum(math.prod(t.shape) for t in tensors if t.expert is not None and t.layer < cfg.num_layers)
    assert experts == 79 * 192 * 3 * 4096 * 1536
    assert cfg.dense_layers == [0] and cfg.mtp_layers == [80] and (cfg.num_experts, cfg.top_k) == (192, 8)


def test_llama_config_is_refused_with_a_clear_message(tmp_path):
    from transformers import LlamaConfig

    root = write_config(tmp_path / "llama", LlamaConfig().to_dict() | {"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(Hy3Error, match="not a Hy3 config.*'llama'"):
        load_config(root)
    assert_one_error(run_cli("convert", "inner-to-outer", root, tmp_path / "out"),
                     str(root / "config.json"), "not a Hy3 config", "hy_v3")
    assert not (tmp_path / "out").exists()


def test_first_k_dense_replace_contradicting_mlp_layer_types_fails():
    d = load_config(BUNDLED).to_tencent()
    d = dict(d, num_hidden_layers=3, first_k_dense_replace=2, mlp_layer_types=["dense", "sparse", "sparse"])
    with pytest.raises(Hy3Error, match="first_k_dense_replace=2 disagrees with mlp_layer_types"):
        config_from_dict(d)


@pytest.mark.parametrize("change, message", [
    ({"mlp_layer_types": ["dense", "sparse"]}, "mlp_layer_types has 2 entries, num_hidden_layers is 80"),
    ({"mlp_layer_types": ["dense"] + ["moe"] * 79}, "mlp_layer_types has 'moe'"),
    ({"num_experts_per_tok": 300}, "num_experts_per_tok 300 must be between 1 and num_experts 192"),
    ({"num_key_value_heads": 7}, "not a multiple of num_key_value_heads 7"),
    ({"moe_router_use_sigmoid": False}, "moe_router_use_sigmoid is false"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope type 'yarn' is not supported"),
])
def test_inconsistent_or_unsupported_fields_fail(change, message):
    d = dict(load_config(BUNDLED).to_tencent(), **change)
    d.pop("first_k_dense_replace")
    with pytest.raises(Hy3Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(d, "config.json")


def test_missing_field_is_named(tmp_path):
    d = load_config(BUNDLED).to_tencent()
    del d["hidden_size"]
    with pytest.raises(Hy3Error, match="config.json: missing field 'hidden_size'"):
        load_config(write_config(tmp_path / "c", d))


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(Hy3Error, match="config.json: not found"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(Hy3Error, match="config.json: not valid JSON"):
        load_config(tmp_path)
