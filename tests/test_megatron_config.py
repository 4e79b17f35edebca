"""Hy3 config <-> megatron-core TransformerConfig, the mapping table's Megatron rows, and `hy3 config`."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_ok, assert_one_error, run_cli, tiny_config
from megatron_helpers import config_from_transformer
from megatron_hy.config import load_config
from megatron_hy.errors import Hy3Error
from megatron_hy.mapping import logical_tensors, mcore_tensors
from megatron_hy.megatron.config import megatron_lm_flags, padded_vocab_size, transformer_config_kwargs
from megatron_hy.transforms import from_mcore, to_mcore

pytestmark = pytest.mark.megatron

HY3 = "megatron_hy/assets/hy3_config.json"


def test_transformer_config_for_real_hy3():
    kw = transformer_config_kwargs(load_config(HY3))
    assert kw["num_layers"] == 80 and kw["hidden_size"] == 4096 and kw["num_query_groups"] == 8
    assert kw["kv_channels"] == 128 and kw["ffn_hidden_size"] == 13312
    assert kw["num_moe_experts"] == 192 and kw["moe_router_topk"] == 8 and kw["moe_ffn_hidden_size"] == 1536
    assert kw["moe_shared_expert_intermediate_size"] == 1536
    assert kw["moe_router_score_function"] == "sigmoid" and kw["moe_router_enable_expert_bias"] is True
    assert kw["moe_router_topk_scaling_factor"] == 2.826 and kw["moe_router_dtype"] == "fp32"
    assert kw["moe_router_bias_update_rate"] == 0.0 and kw["moe_aux_loss_coeff"] == 0.0
    assert kw["moe_layer_freq"] == [0] + [1] * 79 and kw["mtp_num_layers"] == 1
    assert kw["qk_layernorm"] is True and kw["normalization"] == "RMSNorm" and kw["gated_linear_unit"]


def test_megatron_core_accepts_the_arguments():
    from megatron.core.transformer import TransformerConfig

    tc = TransformerConfig(**transformer_config_kwargs(tiny_config()), use_cpu_initialization=True)
    assert tc.moe_router_score_function == "sigmoid" and tc.num_moe_experts == 8


@pytest.mark.parametrize("overrides", [{}, {"dense_layers": 2, "layers": 4}, {"kv_heads": 1}, {"mtp": 0}])
def test_config_round_trip_through_megatron(overrides):
    cfg = tiny_config(**overrides)
    back = config_from_transformer(transformer_config_kwargs(cfg), cfg.vocab_size,
                                   max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta)
    for field in ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                  "num_experts", "top_k", "moe_ffn", "num_shared_experts", "layer_types", "num_mtp_layers",
                  "router_scaling_factor", "rms_norm_eps"):
        assert getattr(back, field) == getattr(cfg, field), field


def test_top1_routing_is_refused_with_the_reason():
    with pytest.raises(Hy3Error, match="normalize"):
        transformer_config_kwargs(tiny_config(top_k=1))


def test_a_model_without_moe_layers_is_refused_with_the_reason():
    with pytest.raises(Hy3Error, match="no MoE layer"):
        transformer_config_kwargs(tiny_config(dense_layers=3))


def test_megatron_lm_flags():
    flags = megatron_lm_flags(load_config(HY3))
    assert "--moe-layer-freq '([0]*1+[1]*79)'" in flags and "--mtp-num-layers 1" in flags
    assert "--num-query-groups 8" in flags and "--untie-embeddings-and-output-weights" in flags


def test_padded_vocab():
    assert padded_vocab_size(120832, 8) == 120832
    assert padded_vocab_size(301, 2) == 302
    assert padded_vocab_size(301, 2, 128) == 512


def test_table_covers_every_hf_tensor_once():
    cfg = tiny_config(layers=4, dense_layers=2)
    used = []
    for t in mcore_tensors(cfg):
        for e in range(t.experts or 1):
            used += list(t.sources(e if t.experts else None))
    names = [t.name for t in logical_tensors(cfg)]
    # post_attention_layernorm feeds one Megatron key per layer; everything else exactly once
    assert sorted(used) == sorted(names)


def test_transforms_are_exact_inverses():
    cfg = tiny_config(kv_heads=1)
    gen = torch.Generator().manual_seed(0)
    shapes = {t.name: t.shape for t in logical_tensors(cfg)}
    for t in mcore_tensors(cfg, padded_vocab=514):
        names = t.sources(3 if t.experts else None)
        parts = [torch.randn(shapes[n], generator=gen).to(torch.bfloat16) for n in names]
        built = to_mcore(t.row.op, parts, cfg, rows=t.shape[0])
        assert tuple(built.shape) == (t.shape[1:] if t.experts else t.shape)
        back = from_mcore(t.row.op, built, [shapes[n] for n in names], cfg)
        assert all(torch.equal(a, b) for a, b in zip(parts, back)), t.key


def test_qkv_interleaves_per_query_group():
    cfg = tiny_config()  # 4 heads, 2 groups, head_dim 16
    h = cfg.hidden_size
    q = torch.arange(4 * 16)[:, None].expand(-1, h).float()
    k = 1000 + torch.arange(2 * 16)[:, None].expand(-1, h).float()
    v = 2000 + torch.arange(2 * 16)[:, None].expand(-1, h).float()
    qkv = to_mcore("qkv", [q, k, v], cfg)[:, 0]
    # group 0: q heads 0-1, k head 0, v head 0; then group 1
    expect = torch.cat([q[:32, 0], k[:16, 0], v[:16, 0], q[32:, 0], k[16:, 0], v[16:, 0]])
    assert torch.equal(qkv, expect)


def test_hy3_config_command(tmp_path):
    out = assert_ok(run_cli("config", HY3, "--to", "json")).stdout
    data = json.loads(out)
    assert data["transformer_config"]["moe_router_topk"] == 8 and data["gpt_model"]["vocab_size"] == 120832
    assert "--moe-router-score-function sigmoid" in assert_ok(run_cli("config", HY3, "--to", "megatron")).stdout
    assert "layer_types" in assert_ok(run_cli("config", HY3)).stdout
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert_one_error(run_cli("config", str(tmp_path), "--to", "megatron"), "not a Hy3 config")


def test_swift_settings_are_megatron_sft_flags_and_in_every_recipe():
    from pathlib import Path

    from megatron_hy.megatron.config import swift_moe_settings
    from megatron_hy.plan.recipe import load_recipe
    from megatron_hy.swift.args import check_args

    settings = swift_moe_settings(load_config(HY3))
    assert check_args(settings, "sft") == []
    recipes = sorted(Path("recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        args = load_recipe(path).args
        for key, value in settings.items():
            if key != "mtp_num_layers":
                assert args.get(key) == value, f"{path.name}: {key}"
    out = assert_ok(run_cli("config", HY3, "--to", "swift")).stdout
    assert "--moe_router_load_balancing_type none" in out and '"moe_router_bias_update_rate":0.0' in out


@pytest.mark.slow
def test_table_is_exactly_the_real_hy3_gptmodel():
    """The full 80-layer, 192-expert Hy3 with its MTP layer, built by megatron-core on the meta device:
    its checkpoint keys and global shapes are exactly the mapping table's."""
    from megatron_hy.convert.mcore_pieces import megatron_layout

    cfg = load_config(HY3)
    layout = megatron_layout(cfg, cfg.vocab_size)
    table = {t.key: t.shape for t in mcore_tensors(cfg)}
    megatron = {p.key: p.global_shape for p in layout["pieces"]}
    assert megatron == table
    assert len(table) == 975
    assert table["mtp.layers.0.transformer_layer.mlp.experts.experts.linear_fc1.weight"] == (192, 3072, 4096)
    assert table["decoder.layers.1.self_attention.linear_qkv.weight"] == ((64 + 2 * 8) * 128, 4096)
