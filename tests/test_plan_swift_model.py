"""`hy3 plan` rejects a recipe that would make ms-swift build another model than the checkpoint's, and
`hy3 launch` passes the plugin by its installed path."""

from __future__ import annotations

from conftest import TEST_RECIPE, assert_one_error, run_cli
from megatron_hy.config import load_config
from megatron_hy.plan.planner import DEFAULT_CONFIG
from megatron_hy.swift.model import layer_freq
from megatron_hy.swift.recipe import RECIPE_PLUGIN, check, with_plugin
from megatron_hy.swift.plugin import swift_plugin_path

CFG = load_config(DEFAULT_CONFIG)
OK = {"custom_register_path": RECIPE_PLUGIN, "mtp_num_layers": 1}


def test_a_recipe_with_the_plugin_and_the_checkpoints_model_passes():
    assert check(OK, CFG) == []
    assert check(dict(OK, mtp_num_layers=0), CFG) == []
    # the same model in other spellings is no contradiction
    same = {"megatron_extra_kwargs": {"qk_layernorm": True, "moe_layer_freq": "[0]*1+[1]*79",
                                      "moe_router_score_function": "sigmoid", "moe_ffn_hidden_size": 1536}}
    assert check(dict(OK, **same), CFG) == []


def test_moe_layer_freq_spellings_are_read_without_running_them():
    dense_first = [0] + [1] * 3
    for spelling in ("[0]*1+[1]*3", "([0]*1+[1]*3)", "[0, 1, 1, 1]", "[0]+[1]*3", [0, 1, 1, 1], (0, 1, 1, 1)):
        assert layer_freq(spelling, 4) == dense_first, spelling
    assert layer_freq("2", 4) == layer_freq(2, 4) == [1, 0, 1, 0]
    # not Megatron's grammar, or a recipe that would fill memory or run code: unreadable, at once
    for bad in ("[0]*10**12", "[1]*999999999999", "[[0]]*2", "[0]*[1]", "1+[0]", "__import__('os')", "-1", "1e3",
                "[0]*", True, None):
        assert layer_freq(bad, 4) is None, bad


def test_without_the_plugin_ms_swift_builds_another_model():
    (err,) = check({"mtp_num_layers": 1}, CFG)
    assert "custom_register_path" in err and RECIPE_PLUGIN in err
    assert check({"custom_register_path": [str(swift_plugin_path())], "mtp_num_layers": 1}, CFG) == []


def test_model_settings_that_contradict_the_checkpoint_are_errors():
    errs = check(dict(OK, megatron_extra_kwargs={"qk_layernorm": False, "moe_layer_freq": 1}), CFG)
    assert any(e.startswith("qk_layernorm False") and "says True" in e for e in errs)
    assert any(e.startswith("moe_layer_freq 1") for e in errs)
    assert any("mtp_num_layers 2" in e for e in check(dict(OK, mtp_num_layers=2), CFG))
    (err,) = check({"custom_register_path": RECIPE_PLUGIN}, CFG)
    assert "mtp_num_layers is not set" in err and "1 MTP layer" in err


def test_plan_cli_rejects_such_a_recipe(tmp_path, hy3_model):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEST_RECIPE.replace("  custom_register_path: megatron_hy/swift/plugin/ms_swift.py\n", "")
                      .replace("{moe_router_bias_update_rate: 0.0}", "{moe_router_bias_update_rate: 0.0, qk_layernorm: false}"))
    proc = run_cli("plan", recipe)
    assert proc.returncode == 1
    assert "custom_register_path" in proc.stdout and "qk_layernorm False" in proc.stdout
    assert_one_error(run_cli("launch", recipe, "--model", hy3_model, "--dataset", "org/data", "--dry-run"), "--skip-plan")


def test_launch_passes_the_installed_plugin():
    assert with_plugin({"custom_register_path": RECIPE_PLUGIN})["custom_register_path"] == str(swift_plugin_path())
    assert with_plugin({})["custom_register_path"] == str(swift_plugin_path())
    mine = with_plugin({"custom_register_path": ["/x/other.py"]})["custom_register_path"]
    assert mine == ["/x/other.py", str(swift_plugin_path())]


def test_a_recipe_naming_the_plugins_former_path_still_gets_the_plugin():
    old = "megatron_hy/plugins/ms_swift.py"   # where the plugin lay before the ms-swift code moved to swift/
    assert check(dict(OK, custom_register_path=old), CFG) == []
    assert with_plugin({"custom_register_path": old})["custom_register_path"] == str(swift_plugin_path())
