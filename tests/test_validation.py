"""Typed validation of what users hand us: config.json fields, adapter settings, launcher variables and
flags. Each bad value is one error line naming the file (or variable), the field, what was expected and
what was found; never a traceback, and never a value quietly read as something else."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess

import pytest

from cli_inprocess import assert_flag_error, hy3
from conftest import REPO, TEST_RECIPE, assert_one_error, copy_checkpoint
from megatron_hy.errors import Hy3Error
from megatron_hy.launch import resolve_cluster

TWO_NODES = TEST_RECIPE.replace("nodes: 1", "nodes: 2").replace("expert_model_parallel_size: 8",
                                                                 "expert_model_parallel_size: 16")
LAUNCH_VARS = ("IP_LIST", "LOCAL_IP", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST",
               "SLURM_NODEID", "SLURM_NNODES")


def config_dir(tmp_path, src, name="c", **change):
    """A directory holding only src's config.json, with fields changed."""
    d = tmp_path / name
    d.mkdir()
    conf = json.loads((src / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(conf, **change)))
    return d


def edited_checkpoint(tmp_path, src, **change):
    d = copy_checkpoint(src, tmp_path / "ck")
    conf = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(conf, **change)))
    return d


# --- config.json -------------------------------------------------------------------------------------

MALFORMED = [({"num_experts": "eight"}, "num_experts: expected an integer >= 1, found the string \"eight\""),
             ({"rope_parameters": 5}, "rope_parameters: expected an object ({...}), found 5")]


@pytest.mark.parametrize("change, message", MALFORMED, ids=["num_experts", "rope_parameters"])
def test_malformed_config_field_is_one_error_in_convert_plan_and_config(tiny_inner, tmp_path, capsys, change, message):
    d = config_dir(tmp_path, tiny_inner, **change)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TEST_RECIPE)
    where = str(d / "config.json")
    assert_one_error(hy3(capsys, "convert", "hf-to-mcore", d, tmp_path / "out"), where, message)
    assert_one_error(hy3(capsys, "convert", "inner-to-outer", d, tmp_path / "out"), where, message)
    assert_one_error(hy3(capsys, "plan", recipe, "--hf-config", d), where, message)
    assert_one_error(hy3(capsys, "config", d, "--to", "megatron"), where, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    *MALFORMED,
    ({"hidden_size": "64"}, "hidden_size: expected an integer >= 1, found the string \"64\""),
    ({"hidden_size": 64.5}, "hidden_size: expected an integer >= 1, found 64.5"),
    ({"num_experts": "8"}, "num_experts: expected an integer >= 1, found the string \"8\""),
    ({"dtype": "float8"}, "dtype: expected one of 'bfloat16', 'float16', 'float32', found the string \"float8\""),
    ({"num_hidden_layers": True}, "num_hidden_layers: expected an integer >= 1, found true"),
    ({"tie_word_embeddings": 0}, "tie_word_embeddings: expected true or false, found 0"),
], ids=["num_experts", "rope_parameters", "hidden_size_string", "hidden_size_float", "num_experts_string",
        "dtype", "bool_as_int", "int_as_bool"])
def test_check_reports_a_wrongly_typed_config_field(tiny_inner, tmp_path, capsys, change, message):
    """Each of these passed `hy3 check` (or gave a traceback) when fields were read with int()/float()/bool()."""
    d = edited_checkpoint(tmp_path, tiny_inner, **change)
    proc = hy3(capsys, "check", d, "--json")
    rep = json.loads(proc.stdout)
    assert proc.returncode == 1 and not rep["ok"]
    assert rep["errors"] == [f"{d / 'config.json'}: {message}"]


def test_config_does_not_round_a_fractional_size(tiny_inner, tmp_path, capsys):
    d = config_dir(tmp_path, tiny_inner, hidden_size=64.5)
    proc = assert_one_error(hy3(capsys, "config", d, "--to", "megatron"), "hidden_size", "found 64.5")
    assert "--hidden-size 64" not in proc


@pytest.mark.parametrize("change, message", [
    ({"first_k_dense_replace": -1, "mlp_layer_types": None}, "first_k_dense_replace: expected an integer >= 0"),
    ({"architectures": "HYV3ForCausalLM", "model_type": None}, "architectures: expected a list of strings"),
    ({"qk_norm": "false"}, "qk_norm: expected true or false, found the string \"false\""),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "1e6"}}, "rope_parameters: rope_theta: expected a number > 0"),
    ({"rms_norm_eps": 0}, "rms_norm_eps: expected a number > 0, found 0"),
    ({"eos_token_id": [2, "x"]}, "eos_token_id: expected an integer >= 0"),
    ({"num_attention_heads": 0}, "num_attention_heads: expected an integer >= 1, found 0"),
])
def test_other_config_fields_are_typed(tiny_inner, tmp_path, change, message):
    from megatron_hy.config import load_config

    d = config_dir(tmp_path, tiny_inner, **change)
    with pytest.raises(Hy3Error) as e:
        load_config(d)
    assert str(e.value).startswith(f"{d / 'config.json'}: {message}")


def test_safetensors_header_with_a_fractional_shape_is_corrupt(tmp_path):
    from megatron_hy.formats.safetensors_io import read_header

    header = json.dumps({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(Hy3Error, match="corrupt safetensors header entry for 'w'"):
        read_header(f)


# --- LoRA adapter settings ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def peft_adapter(tiny_inner, tmp_path_factory):
    from megatron_hy.lora.tiny import write_tiny_adapter

    return write_tiny_adapter(tiny_inner, tmp_path_factory.mktemp("adapters") / "peft", "swift-peft")


def adapter_copy(src, tmp_path, conf=None, name="a"):
    d = tmp_path / name
    shutil.copytree(src, d)
    if conf is not None:
        c = json.loads((d / "adapter_config.json").read_text())
        (d / "adapter_config.json").write_text(json.dumps(dict(c, **conf)))
    return d


def test_truncated_adapter_safetensors_is_one_error(tiny_inner, peft_adapter, tmp_path, capsys):
    d = adapter_copy(peft_adapter, tmp_path)
    f = d / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = tmp_path / "out"
    assert_one_error(hy3(capsys, "lora", "merge", "--base", tiny_inner, "--adapter", d, out), str(f), "truncated")
    assert_one_error(hy3(capsys, "lora", "export-peft", "--adapter", d, "--base", tiny_inner, out), str(f), "truncated")
    assert not out.exists()


@pytest.mark.parametrize("conf, message", [
    ({"r": "x"}, "r: expected an integer >= 1, found the string \"x\""),
    ({"r": True}, "r: expected an integer >= 1, found true"),
    ({"lora_alpha": "16"}, "lora_alpha: expected a number > 0, found the string \"16\""),
    ({"use_rslora": "yes"}, "use_rslora: expected true or false"),
    ({"rank_pattern": {"q_proj(": 4}}, "rank_pattern: 'q_proj(' is not a valid regular expression"),
    ({"rank_pattern": {"q_proj": "4"}}, "rank_pattern['q_proj']: expected an integer >= 1"),
    ({"target_parameters": "gate_up_proj"}, "target_parameters: expected a list of strings"),
], ids=["r", "r_bool", "alpha", "rslora", "regex", "pattern_value", "target_parameters"])
def test_adapter_config_fields_are_typed(tiny_inner, peft_adapter, tmp_path, capsys, conf, message):
    d = adapter_copy(peft_adapter, tmp_path, conf)
    assert_one_error(hy3(capsys, "lora", "merge", "--base", tiny_inner, "--adapter", d, tmp_path / "out"),
                     f"{d / 'adapter_config.json'}: {message}")
    assert not (tmp_path / "out").exists()


def test_adapter_config_that_is_not_an_object(tiny_inner, peft_adapter, tmp_path, capsys):
    d = adapter_copy(peft_adapter, tmp_path)
    (d / "adapter_config.json").write_text("[1, 2]")
    assert_one_error(hy3(capsys, "lora", "merge", "--base", tiny_inner, "--adapter", d, tmp_path / "out"),
                     "adapter_config.json: expected a JSON object, found a list [1, 2]")


def test_mcore_adapter_args_are_typed(tiny_inner, tmp_path, capsys):
    from megatron_hy.lora.tiny import write_tiny_adapter

    d = write_tiny_adapter(tiny_inner, tmp_path / "mc", "mcore")
    args = json.loads((d / "args.json").read_text())
    (d / "args.json").write_text(json.dumps(dict(args, lora_rank="4")))
    assert_one_error(hy3(capsys, "lora", "merge", "--base", tiny_inner, "--adapter", d, tmp_path / "out"),
                     f"{d / 'args.json'}: lora_rank: expected an integer >= 1, found the string \"4\"")


# --- the launcher ------------------------------------------------------------------------------------

@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def dry_run(capsys, tmp_path, model, recipe_text=TWO_NODES, *extra):
    """`model`: a model directory the pre-flight accepts (config, tokenizer, inner layout): conftest.hy3_model."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    return hy3(capsys, "launch", recipe, "--model", model, "--dataset", "org/data", "--dry-run", *extra)


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "two", "MASTER_ADDR": "head"}, "environment: NNODES: expected an integer >= 1, found the string \"two\""),
    ({"NNODES": "2", "NODE_RANK": "x", "MASTER_ADDR": "head"},
     "environment: NODE_RANK: expected an integer from 0 to 1 (NNODES names 2 node(s)), found the string \"x\""),
    ({"IP_LIST": "10.0.0.1,10.0.0.2", "MASTER_PORT": "abc"},
     "environment: MASTER_PORT: expected an integer from 1 to 65535, found the string \"abc\""),
    ({"IP_LIST": "10.0.0.1,10.0.0.2", "NODE_RANK": "5"},
     "environment: NODE_RANK: expected an integer from 0 to 1 (IP_LIST names 2 node(s)), found 5"),
    ({"IP_LIST": "10.0.0.1,10.0.0.2", "NODE_RANK": "-1"}, "NODE_RANK: expected an integer from 0 to 1"),
    ({"SLURM_JOB_NODELIST": "gpu[1-2]", "SLURM_NODEID": "7"},
     "environment: SLURM_NODEID: expected an integer from 0 to 1 (SLURM_JOB_NODELIST names 2 node(s)), found 7"),
    ({"IP_LIST": "10.0.0.1,10.0.0.2", "MASTER_PORT": "0"}, "MASTER_PORT: expected an integer from 1 to 65535, found 0"),
], ids=["nnodes", "node_rank_text", "port_text", "rank_5", "rank_-1", "slurm_nodeid", "port_0"])
def test_launcher_variables_are_checked_even_for_a_dry_run(tmp_path, capsys, clean_env, hy3_model, env, message):
    for k, v in env.items():
        clean_env.setenv(k, v)
    assert_one_error(dry_run(capsys, tmp_path, hy3_model), message)


def test_launcher_flags_and_recipe_values(tmp_path, capsys, clean_env, hy3_model):
    clean_env.setenv("IP_LIST", "10.0.0.1,10.0.0.2")
    assert_flag_error(dry_run(capsys, tmp_path, hy3_model, TWO_NODES, "--master-port", "99999"), "--master-port",
                      "an integer from 1 to 65535")
    assert_one_error(dry_run(capsys, tmp_path, hy3_model, TWO_NODES.replace("max_length: 4096", "max_length: 0")),
                     "r.yaml: args: max_length: expected an integer >= 1, found 0")
    with pytest.raises(Hy3Error, match="--master-port: expected an integer from 1 to 65535, found 99999"):
        resolve_cluster("ip-list", 2, {"IP_LIST": "a,b"}, port=99999)
    assert resolve_cluster("ip-list", 2, {"IP_LIST": "a,b", "NODE_RANK": "1", "MASTER_PORT": "6000"}).port == 6000


@pytest.mark.parametrize("var, value, message", [
    ("NODE_RANK", "5", "NODE_RANK: expected an integer from 0 to 1, found '5'"),
    ("NODE_RANK", "-1", "NODE_RANK: expected an integer from 0 to 1, found '-1'"),
    ("MASTER_PORT", "99999", "MASTER_PORT: expected an integer from 1 to 65535, found '99999'"),
    ("HOST_GPU_NUM", "eight", "HOST_GPU_NUM: expected an integer >= 1, found 'eight'"),
])
def test_train_sh_checks_its_integers(var, value, message):
    env = dict(os.environ, IP_LIST="10.0.0.1,10.0.0.2", LOCAL_IP="10.0.0.2", MODEL="/m", DATASET="/d.jsonl",
               OUTPUT_DIR="/o", DRY_RUN="1", **{var: value})
    proc = subprocess.run(["bash", str(REPO / "launch" / "train.sh")], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 1 and proc.stderr.strip() == f"train.sh: {message}", proc.stderr


# --- other flags ------------------------------------------------------------------------------------

def test_negative_iteration_is_refused_before_anything_is_written(tiny_inner, tmp_path, capsys):
    out = tmp_path / "out"
    assert_flag_error(hy3(capsys, "convert", "hf-to-mcore", tiny_inner, out, "--iteration", "-1"), "--iteration",
                      "an integer >= 0")
    assert not out.exists() and not list(tmp_path.glob("**/iter_-*"))


@pytest.mark.parametrize("command", [("data", "encode", "in.jsonl", "out.jsonl"), ("data", "stats", "in.jsonl")])
def test_max_length_zero_is_refused(tmp_path, capsys, command):
    assert_flag_error(hy3(capsys, *command, "--max-length", "0"), "--max-length", "an integer >= 1")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("flags, message", [(["--heads", "3"], "not a multiple of num_key_value_heads 2"),
                                            (["--top-k", "9"], "must be between 1 and num_experts 8")])
def test_make_tiny_refuses_flags_that_contradict_each_other(tmp_path, capsys, flags, message):
    assert_one_error(hy3(capsys, "make-tiny", tmp_path / "t", *flags), "make-tiny flags", message)
    assert_flag_error(hy3(capsys, "make-tiny", tmp_path / "t", "--layers", "0"), "--layers", "an integer >= 1")
    assert not (tmp_path / "t").exists()
