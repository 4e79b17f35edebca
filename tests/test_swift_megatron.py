"""ms-swift's own Megatron path for Hy3, run for real on CPU: mcore-bridge builds, loads, saves and exports
with our plugin, ms-swift loads our torch_dist strictly and saves its own, under TP1, TP2 and EP2.

Everything that runs is ms-swift's, mcore-bridge's and megatron-core's code except the test-only
transformer_engine stand-in (tests/te_standin): this proves names, shapes, partitioning and
checkpoint objects, not transformer-engine kernels.
"""

from __future__ import annotations

import shlex

import pytest
import torch

from conftest import assert_ok, load_tensors, run_cli, same_bits
from megatron_hy.config import load_config
from megatron_hy.mapping import expected_keys, mcore_tensors
from megatron_hy.mcore_versions import MTP_NO_CORE_ATTENTION_EXTRA_STATE, NO_COMMON_PT, since
from megatron_hy.swift.plugin import swift_plugin_path

LAYOUTS = ["tp1", "tp2", "ep2"]
pytestmark = [pytest.mark.slow, pytest.mark.megatron]


def assert_same_checkpoint(a, b):
    ta, tb = load_tensors(a), load_tensors(b)
    assert sorted(ta) == sorted(tb), (sorted(set(ta) ^ set(tb)))[:8]
    bad = [k for k in ta if not same_bits(ta[k], tb[k])]
    assert not bad, bad[:8]
    return ta


@pytest.mark.parametrize("layout", LAYOUTS)
def test_builder_gives_the_model_the_config_describes(swift_run, tiny_inner, layout):
    """mcore-bridge's builder with the plugin, from transformers' and Tencent's spelling of config.json,
    with no model settings passed by hand: the tensors of the mapping table, dense layer 0, q/k norm, MTP,
    the sigmoid router with expert bias, frozen for SFT."""
    cfg = load_config(tiny_inner)
    want = {t.key: tuple(t.shape) for t in mcore_tensors(cfg)}
    kinds = ["moe" if t == "sparse" else "dense" for t in cfg.layer_types]
    for report in swift_run.ranks(layout):
        for spelling, got in report["built"].items():
            assert got["tensors"] == want, (spelling, sorted(set(got["tensors"].items()) ^ set(want.items()))[:6])
            assert got["layer_kinds"] == kinds, spelling
            assert got["qk_norm"] and got["mtp_layers"] == cfg.num_mtp_layers, spelling
            assert got["router"] == [("sigmoid", True, cfg.top_k, pytest.approx(cfg.router_scaling_factor))], spelling
            c = got["config"]
            assert (c["moe_ffn_hidden_size"], c["moe_shared_expert_intermediate_size"]) == (cfg.moe_ffn, cfg.shared_ffn)
            assert c["rotary_base"] == int(cfg.rope_theta) and c["untie_embeddings_and_output_weights"]
            assert (c["moe_router_bias_update_rate"], c["moe_router_load_balancing_type"], c["moe_aux_loss_coeff"]) \
                == (0.0, "none", 0.0)
            # the transformer-engine spec with grouped experts, as ms-swift builds it on GPUs
            assert {"TEColumnParallelGroupedLinear", "TERowParallelGroupedLinear", "TELayerNormColumnParallelLinear",
                    "TEDotProductAttention"} <= set(got["modules"])


def test_without_the_plugin_mcore_bridge_builds_another_model(swift_run, tiny_inner):
    """What the plugin fixes (mcore-bridge 1.6.5's own hy_v3 entry, transformers' spelling)."""
    cfg = load_config(tiny_inner)
    got = swift_run.ranks("tp1")[0]["unpatched"]
    assert got["layer_kinds"] == ["moe"] * cfg.num_layers   # layer 0 should be dense
    assert not got["qk_norm"] and got["mtp_layers"] == 0
    assert got["config"]["moe_router_load_balancing_type"] == "aux_loss"


def test_settings_that_contradict_the_checkpoint_are_refused(swift_run):
    """A model setting in megatron_extra_kwargs that differs from the checkpoint fails the build. (One equal
    to mcore-bridge's own default cannot be told from that default here and is replaced by the checkpoint's
    value; `hy3 plan` rejects any contradicting setting in a recipe.)"""
    found = swift_run.ranks("tp1")[0]["conflicts"]
    assert "qk_layernorm=False" in found["qk_layernorm"] and "config.json says True" in found["qk_layernorm"]
    assert "moe_ffn_hidden_size=48" in found["moe_ffn"]
    assert found["mtp_off"]     # --mtp_num_layers 0 trains without the MTP layer


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_weights_equals_our_torch_dist_through_swift_loader(swift_run, layout):
    """Per rank, bitwise: mcore-bridge's load_weights of the inner checkpoint == its load of the outer one
    == our torch_dist (from inner and from outer) read by ms-swift's load_mcore_checkpoint, whose strict
    load found every object the transformer-engine model asks for."""
    for report in swift_run.ranks(layout):
        assert report["n_tensors"] > 60
        assert report["loaded"] == {"bridge:outer": [], "torch_dist:inner": [], "torch_dist:outer": []}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swift_saved_checkpoint_converts_back_byte_exact(swift_run, tiny_inner, tmp_path, layout):
    assert_ok(run_cli("convert", "mcore-to-hf", swift_run.out(layout) / "swift-save", tmp_path / "hf",
                      "--hf-config", tiny_inner, "--quiet"))
    assert_same_checkpoint(tiny_inner, tmp_path / "hf")


@pytest.mark.filterwarnings("ignore:torch.distributed is unavailable")
def test_swift_save_and_our_torch_dist_hold_the_same_objects(swift_run):
    """Same tensor keys, shapes and bytes, and the same `_extra_state` objects with the same content
    (transformer-engine's empty byte tensor) as ms-swift's own save of the model."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    def read(root):
        it = root / "iter_0000001"
        meta = FileSystemReader(str(it)).read_metadata().state_dict_metadata
        objects = sorted(k for k, v in meta.items() if isinstance(v, BytesStorageMetadata))
        values = _load_state_dict_from_keys(set(meta), checkpoint_id=str(it))
        return meta, objects, values

    ours, theirs = read(swift_run.mcore["inner"]), read(swift_run.out("tp1") / "swift-save")
    mtp_attention = [k for k in ours[1] if "core_attention._extra_state" in k]
    assert mtp_attention   # what megatron-core 0.16.1 with transformer-engine asks for
    # the objects the installed release saves besides ours: since 0.17 no MTP attention-core state, since 0.19
    # the common state inside the DCP checkpoint (and no common.pt)
    not_saved = set(mtp_attention) if since(MTP_NO_CORE_ATTENTION_EXTRA_STATE) else set()
    common = [k for k in theirs[1] if k.startswith("common_state")]
    assert bool(common) == since(NO_COMMON_PT)
    assert (swift_run.out("tp1") / "swift-save" / "iter_0000001" / "common.pt").exists() != since(NO_COMMON_PT)
    assert sorted(set(ours[1]) - not_saved) == sorted(set(theirs[1]) - set(common))
    assert sorted(set(ours[0]) - not_saved) == sorted(set(theirs[0]) - set(common))
    for k in set(ours[0]) - not_saved:
        a, b = ours[2][k], theirs[2][k]
        if k in ours[1]:
            assert len(a) == len(b) == 1 and a[0].dtype == b[0].dtype == torch.uint8 and a[0].numel() == b[0].numel() == 0
        else:
            assert same_bits(a, b), k


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_to_hf_writes_the_original_keys_and_bytes(swift_run, tiny_inner, tiny_outer, layout):
    """`megatron export --to_hf` (bridge.save_weights through ms-swift's wrapper), in the layout of the
    checkpoint the model came from; so it equals `hy3 convert mcore-to-hf` (previous test)."""
    out = swift_run.out(layout)
    inner = assert_same_checkpoint(tiny_inner, out / "export-inner")
    assert_same_checkpoint(tiny_outer, out / "export-outer")
    cfg = load_config(tiny_inner)
    assert sorted(inner) == sorted(expected_keys(cfg, "inner"))
    assert f"model.layers.{cfg.num_layers}.final_layernorm.weight" in inner   # Tencent's MTP norm key
    if layout == "tp1":
        assert_ok(run_cli("check", out / "export-inner"))   # with the config.json ms-swift wrote


@pytest.mark.parametrize("layout", LAYOUTS)
def test_export_keeps_each_tensors_source_dtype(swift_run, layout):
    """A checkpoint whose router expert bias is bf16: mcore-bridge's own `--to_hf` export through the plugin
    (bridge.save_weights, as `megatron export` and `save_safetensors` call it), after loading the HF weights and
    after loading our torch_dist, writes every tensor in its source dtype and bytes: the bias stays bf16, as
    `hy3 convert mcore-to-hf` keeps it (megatron-core holds it in fp32). Issue 21."""
    source = swift_run.root / "bf16-bias"
    src = load_tensors(source)
    biases = [k for k in src if k.endswith(".mlp.expert_bias")]
    assert biases and all(src[k].dtype == torch.bfloat16 for k in biases)
    for name in ("hf", "mcore"):
        out = swift_run.out(layout) / f"export-bf16-bias-{name}"
        got = assert_same_checkpoint(source, out)   # same keys, dtypes and bytes
        assert all(got[k].dtype == torch.bfloat16 for k in biases), name


def test_checkpoint_ms_swift_saved_in_a_run_directory_converts(swift_run, tiny_inner, tmp_path):
    """ms-swift's own torch_dist save, placed as `megatron sft` places its saves (OUT/vX-.../checkpoint-N/):
    `hy3 convert mcore-to-hf OUT` reads the newest checkpoint and says which."""
    import shutil

    ck = tmp_path / "out" / "v0-20260101-120000" / "checkpoint-1"
    shutil.copytree(swift_run.out("tp1") / "swift-save", ck)
    proc = assert_ok(run_cli("convert", "mcore-to-hf", tmp_path / "out", tmp_path / "hf", "--model", tiny_inner))
    assert f"using {ck}" in proc.stderr
    assert_same_checkpoint(tiny_inner, tmp_path / "hf")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lora_from_mcore_bridge_merges_as_mcore_bridge_merges(swift_run, lora_base, tmp_path, layout):
    """An adapter from mcore-bridge's LoRA tuner (nonzero factors), saved by ms-swift as torch_dist and as
    safetensors, merged by `hy3 lora merge`, equals mcore-bridge's own merge exported to HF."""
    report = swift_run.ranks(layout)[0]
    assert report["lora_factors"] > 0 and {"linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"} <= set(
        report["lora_targets"])
    lora = swift_run.out(layout) / "lora"
    expected, base = load_tensors(lora / "merged"), load_tensors(lora_base)
    assert sorted(expected) == sorted(base)
    changed = [k for k in base if not torch.equal(base[k], expected[k])]
    assert any(".experts." in k for k in changed) and any("self_attn" in k for k in changed)
    for fmt in ("dist", "safetensors"):
        assert_ok(run_cli("lora", "merge", "--base", lora_base, "--adapter", lora / fmt, tmp_path / fmt, "--quiet"))
        mine = load_tensors(tmp_path / fmt)
        assert sorted(mine) == sorted(expected)
        worst = max(((mine[k].double() - expected[k].double()).abs().max() /
                     expected[k].double().abs().max().clamp_min(1e-30)).item() for k in expected)
        assert worst <= 1e-6, (fmt, worst)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swift_checkpoints_pass_the_restricted_unpicklers(swift_run, lora_base, tmp_path, layout):
    """What ms-swift's savers write passes our loaders that run no code from a file: megatron-core's `.metadata`
    (with its save plans) reads as plain pickle reads it; without args.json, an adapter's settings come from the
    args ms-swift pickled into the common state (common.pt; under megatron-core 0.19 an object inside the DCP),
    and equal those of args.json."""
    import pickle
    import shutil

    from megatron_hy.formats.dcp import load_metadata
    from megatron_hy.formats.torch_dist import COMMON, load_common
    from megatron_hy.formats.adapters import open_adapter

    lora = swift_run.out(layout) / "lora" / "dist"
    for it in (swift_run.out(layout) / "swift-save" / "iter_0000001", lora / "iter_0000001"):
        ours, plain = load_metadata(it / ".metadata"), pickle.loads((it / ".metadata").read_bytes())
        assert ours.state_dict_metadata == plain.state_dict_metadata and ours.storage_data == plain.storage_data
        common, where = load_common(it)
        assert vars(common["args"])["tuner_type"] in ("lora", "full")
        assert (where == str(it / COMMON)) != since(NO_COMMON_PT), where
    cfg = load_config(lora_base)
    alone = shutil.copytree(lora, tmp_path / "adapter")
    (alone / "args.json").unlink()
    a, b = open_adapter(lora, cfg), open_adapter(alone, cfg)
    assert (a.rank, a.alpha, a.saved_tp, a.scaling) == (b.rank, b.alpha, b.saved_tp, b.scaling) \
        == (4, 8.0, 2 if layout == "tp2" else 1, 2.0)


def test_config_to_swift_prints_the_plugin(tiny_inner):
    out = assert_ok(run_cli("config", tiny_inner, "--to", "swift")).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("--custom_register_path"))
    path = shlex.split(line.rstrip(" \\"))[1]
    assert path == str(swift_plugin_path()) and swift_plugin_path().is_file()
    assert "--moe_grouped_gemm true" in out   # with the MoE training settings
    assert "--template hy3" in out            # and the plugin's template (tests/test_conventions.py: as launch)


def test_plugin_imports_where_megatron_cannot_run():
    """On a machine without transformer-engine (plain `swift sft`, or this CPU box) the plugin registers the
    templates and leaves mcore-bridge alone."""
    from conftest import run_python

    code = ("from swift.utils import import_external_file; import sys; "
            f"import_external_file({str(swift_plugin_path())!r}); "
            "from swift.template import TEMPLATE_MAPPING; "
            "assert 'hy3' in TEMPLATE_MAPPING and 'hy3_preview' in TEMPLATE_MAPPING; "
            "assert 'megatron_hy.swift.bridge' not in sys.modules; print('ok')")
    assert assert_ok(run_python("-c", code)).stdout.strip().endswith("ok")
