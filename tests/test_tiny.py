"""`hy3 make-tiny`: deterministic, multi-shard, straddling experts, MTP layer, config spelled as asked."""

from __future__ import annotations

import json

from conftest import assert_ok, assert_one_error, files_bytes, load_tensors, read_index, run_cli
from megatron_hy.config import load_config
from megatron_hy.mapping import LAYER, expected_keys


def test_cli_output_is_byte_identical_to_a_second_build_with_the_same_seed(tiny_inner, tmp_path):
    assert_ok(run_cli("make-tiny", tmp_path / "again", "--seed", "0"))
    assert files_bytes(tmp_path / "again") == files_bytes(tiny_inner)


def test_another_seed_gives_other_weights(tiny_inner, tmp_path):
    from megatron_hy.tiny import TinySpec, write_tiny

    other = load_tensors(write_tiny(tmp_path / "seed1", TinySpec(), seed=1))
    base = load_tensors(tiny_inner)
    assert set(other) == set(base)
    assert not any(other[k].equal(base[k]) for k in base if "norm" not in k)


def test_keys_and_shapes_are_the_inner_layout_of_its_config(tiny_inner):
    cfg = load_config(tiny_inner)
    tensors = load_tensors(tiny_inner)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_keys(cfg, "inner")
    assert set(read_index(tiny_inner)["weight_map"]) == set(tensors)


def test_several_shards_and_one_layers_experts_straddle_a_boundary(tiny_inner):
    cfg = load_config(tiny_inner)
    weight_map = read_index(tiny_inner)["weight_map"]
    assert len(set(weight_map.values())) >= 3
    spans = {i: {f for k, f in weight_map.items() if k.startswith(LAYER.format(i=i) + "mlp.experts.")}
             for i in cfg.moe_layers + cfg.mtp_layers}
    straddling = [i for i, files in spans.items() if len(files) > 1]
    assert straddling, spans


def test_mtp_layer_is_a_full_moe_layer_plus_its_own_tensors(tiny_inner):
    cfg = load_config(tiny_inner)
    tensors = load_tensors(tiny_inner)
    h = cfg.hidden_size
    (mtp,) = cfg.mtp_layers
    assert mtp == cfg.num_layers
    p = LAYER.format(i=mtp)
    assert tuple(tensors[p + "eh_proj.weight"].shape) == (h, 2 * h)
    for name in ("enorm.weight", "hnorm.weight", "final_layernorm.weight", "input_layernorm.weight"):
        assert tuple(tensors[p + name].shape) == (h,)
    experts = [k for k in tensors if k.startswith(p + "mlp.experts.")]
    assert len(experts) == 3 * cfg.num_experts
    assert p + "mlp.router.gate.weight" in tensors and p + "mlp.shared_mlp.down_proj.weight" in tensors


def test_flags_shape_the_model_and_config_is_spelled_as_asked(tmp_path):
    out = tmp_path / "t"
    assert_ok(run_cli("make-tiny", out, "--format", "outer", "--config-style", "tencent", "--layers", "2",
                      "--dense-layers", "0", "--experts", "4", "--top-k", "1", "--mtp", "0", "--dtype", "fp32"))
    conf = json.loads((out / "config.json").read_text())
    assert conf["first_k_dense_replace"] == 0 and "mlp_layer_types" not in conf
    assert (conf["num_experts"], conf["num_experts_per_tok"], conf["num_nextn_predict_layers"]) == (4, 1, 0)
    cfg = load_config(out)
    tensors = load_tensors(out)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected_keys(cfg, "outer")
    assert {str(v.dtype) for k, v in tensors.items()} == {"torch.float32"}
    assert_ok(run_cli("check", out, "--spot-check", "100"))


def test_fixtures_pass_hy3_check(tiny_inner, tiny_outer, tiny_tencent):
    for root in (tiny_inner, tiny_outer, tiny_tencent):
        proc = assert_ok(run_cli("check", root, "--spot-check", "100"))
        assert "result:     OK" in proc.stdout


def test_refuses_a_non_empty_output(tiny_inner):
    assert_one_error(run_cli("make-tiny", tiny_inner), str(tiny_inner), "not an empty directory")
