"""The field table (megatron_hy/settings.py) is the one place Hy3's settings are spelled: every rendering
(both config.json spellings, read and written; TransformerConfig and GPTModel arguments; Megatron-LM flags;
mcore-bridge fields; `megatron sft` settings; the planner's checks) changes with a row, and a new row
appears in each form without new code."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_hy import settings
from megatron_hy.config import Hy3Config, config_from_dict
from megatron_hy.errors import Hy3Error
from megatron_hy.megatron.config import (gpt_model_kwargs, megatron_lm_flags, swift_moe_settings,
                                         transformer_config_kwargs)
from megatron_hy.plan.planner import _hy3_moe_settings
from megatron_hy.swift import model as swift_model

CFG = Hy3Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4, num_kv_heads=2,
                head_dim=16, num_experts=8, top_k=2, moe_ffn=32, num_shared_experts=1, router_scaling_factor=2.826,
                layer_types=("dense", "sparse", "sparse"), num_mtp_layers=1, dtype="bfloat16")


def with_row(monkeypatch, name: str, **change) -> None:
    table = tuple(dataclasses.replace(s, **change) if s.name == name else s for s in settings.SETTINGS)
    monkeypatch.setattr(settings, "SETTINGS", table)


def renderings(cfg: Hy3Config) -> dict:
    return {"tencent": cfg.to_tencent(), "transformers": cfg.to_transformers(),
            "mcore": transformer_config_kwargs(cfg), "gpt": gpt_model_kwargs(cfg),
            "flag": dict(f.split(" ", 1) if " " in f else (f, True) for f in megatron_lm_flags(cfg)),
            "bridge": swift_model.model_fields(cfg), "swift": swift_moe_settings(cfg)}


def test_a_renamed_setting_is_renamed_in_every_form_read_and_written(monkeypatch):
    old = {form: settings.row("moe_ffn").key(form) for form in ("tencent", "transformers", "mcore", "flag", "bridge")}
    with_row(monkeypatch, "moe_ffn", tencent="expert_width", transformers="moe_width", mcore="moe_width_mc",
             flag="--moe-width", bridge="moe_width_b")
    got = renderings(CFG)
    new = {"tencent": "expert_width", "transformers": "moe_width", "mcore": "moe_width_mc", "flag": "--moe-width",
           "bridge": "moe_width_b"}
    for form, name in new.items():
        assert got[form][name] in (CFG.moe_ffn, str(CFG.moe_ffn)), form
        assert old[form] not in got[form], form
    assert config_from_dict(CFG.to_tencent(), "tencent") == CFG
    hf = dict(CFG.to_transformers(), model_type="hy_v3", dtype=CFG.dtype)   # HYV3Config takes dtype apart
    assert config_from_dict(hf, "transformers") == CFG
    spelled_old = dict(CFG.to_tencent(), expert_hidden_dim=CFG.moe_ffn)
    del spelled_old["expert_width"]
    with pytest.raises(Hy3Error, match="missing field 'moe_width' \\(or 'expert_width'\\)"):
        config_from_dict(spelled_old, "old spelling")


def test_a_changed_value_and_transform_change_every_form(monkeypatch):
    with_row(monkeypatch, "normalization", value="LayerNorm")
    with_row(monkeypatch, "rope_theta", flag=("--rotary-base", float))
    got = renderings(CFG)
    assert got["mcore"]["normalization"] == got["bridge"]["normalization"] == got["flag"]["--normalization"] \
        == "LayerNorm"
    assert got["flag"]["--rotary-base"] == str(CFG.rope_theta)
    assert got["bridge"]["rotary_base"] == int(CFG.rope_theta)


def test_a_setting_every_hy3_has_is_checked_when_config_json_states_it(monkeypatch):
    with_row(monkeypatch, "qk_norm", value=False, what="no q/k norm")
    assert CFG.to_tencent()["qk_norm"] is False and transformer_config_kwargs(CFG)["qk_layernorm"] is False
    assert "--qk-layernorm" not in megatron_lm_flags(CFG)
    with pytest.raises(Hy3Error, match="qk_norm is true, but Hy3 uses no q/k norm"):
        config_from_dict(dict(CFG.to_tencent(), qk_norm=True), "c")


def test_a_new_row_appears_in_every_form_without_new_code(monkeypatch):
    row = settings.Setting("new_thing", 7, tencent="new_t", transformers="new_hf", mcore="new_mc", gpt="new_gpt",
                           flag="--new-flag", bridge="new_b", swift="megatron_extra_kwargs.new_s", check=settings._size,
                           what="seven new things")
    monkeypatch.setattr(settings, "SETTINGS", settings.SETTINGS + (row,))
    got = renderings(CFG)
    for form in ("tencent", "transformers", "mcore", "gpt", "bridge"):
        assert list(got[form])[-1] == row.key(form) and got[form][row.key(form)] == 7, form
    assert megatron_lm_flags(CFG)[-1] == "--new-flag 7"
    assert got["swift"]["megatron_extra_kwargs"]["new_s"] == 7
    assert config_from_dict(CFG.to_tencent(), "c") == CFG
    with pytest.raises(Hy3Error, match="c: new_hf is 8, but Hy3 uses seven new things"):
        config_from_dict(dict(CFG.to_transformers(), model_type="hy_v3", new_hf=8), "c")


def test_the_planner_checks_the_tables_values(monkeypatch):
    with_row(monkeypatch, "token_dispatcher", value="allgather")
    with_row(monkeypatch, "load_balancing", swift="moe_lb")
    assert swift_moe_settings(CFG)["moe_token_dispatcher_type"] == "allgather"
    warnings = []
    _hy3_moe_settings({"moe_token_dispatcher_type": "alltoall", "moe_lb": "none",
                       "megatron_extra_kwargs": {"moe_router_bias_update_rate": 0.0}}, warnings)
    assert warnings == ["moe_token_dispatcher_type is 'alltoall'; the recipes use allgather"]


def test_hy3config_fields_are_the_tables_rows():
    fields = {f.name: f for f in dataclasses.fields(Hy3Config) if f.name != "raw"}
    assert set(fields) == {s.name for s in settings.SETTINGS if s.value is settings.FIELD}
    for name, f in fields.items():
        if f.default is not dataclasses.MISSING:
            assert f.default == settings.default(name), name


def test_bridge_field_lists_are_the_tables_column():
    bridge = settings.rows("bridge")
    assert swift_model.ARCH_FIELDS + (swift_model.MTP,) == tuple(s.key("bridge") for s in bridge if not s.training)
    assert swift_model.TRAINING_DEFAULTS == {s.key("bridge"): s.value for s in bridge if s.training}
    assert tuple(swift_model.model_fields(CFG)) == swift_model.ARCH_FIELDS + (swift_model.MTP,)


def test_orders_name_rows_once_and_each_form_renders_its_rows():
    for form, order in settings.ORDER.items():
        names = order.split()
        assert len(names) == len(set(names)), form
        assert all(settings.row(n) for n in names)
    for form in settings.FORMS:
        assert set(settings.rows(form)) == {s for s in settings.SETTINGS if getattr(s, form) is not None}, form


def test_gpt_model_kwargs_take_the_padded_vocabulary():
    assert gpt_model_kwargs(CFG, 1024)["vocab_size"] == 1024 and gpt_model_kwargs(CFG)["vocab_size"] == 512
