"""`hy3 launch`: the exact per-node commands for one node, IP_LIST, Slurm and NNODES/NODE_RANK; the exec
of this node's command; launch/train.sh agreeing with the recipe it mirrors."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess

import pytest

from conftest import TEST_RECIPE, REPO, assert_ok, assert_one_error, run_cli
from megatron_hy.cli import main
from megatron_hy.errors import Hy3Error
from megatron_hy.launch import expand_hostlist, resolve_cluster
from megatron_hy.plan import load_recipe
from megatron_hy.plan.recipe import to_cli
from megatron_hy.swift.plugin import swift_plugin_path

LAUNCH_VARS = ("IP_LIST", "LOCAL_IP", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST",
               "SLURM_NODEID", "SLURM_NNODES", "SLURM_JOB_ID")

ONE_NODE = TEST_RECIPE
TWO_NODES = ONE_NODE.replace("nodes: 1", "nodes: 2").replace("expert_model_parallel_size: 8",
                                                              "expert_model_parallel_size: 16")
ENV = "CUDA_DEVICE_MAX_CONNECTIONS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True NCCL_DEBUG=WARN"


PLUGIN = str(swift_plugin_path())


@pytest.fixture
def run_inputs(tmp_path, hy3_model):
    """What a dry run checks, for real: the model directory (hy3_model), two row files, a run directory."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        (data / f"{name}.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}, '
                                            '{"role": "assistant", "content": "hello"}]}\n')
    return {"model": hy3_model, "data": data, "out": tmp_path / "out"}


def encode_lines(p) -> str:
    """Hy3 rows are encoded into the run's directory first and trained as ms-swift cached datasets."""
    m, d, o = p["model"], p["data"], p["out"]
    return f"""# node 0 first encodes the Hy3 rows into the run's directory (the other nodes wait for them):
# hy3 data encode --model {m} {d}/a.jsonl {o}/hy3-data/a.jsonl --swift-dataset {o}/hy3-data/a --max-length 4096
# hy3 data encode --model {m} {d}/b.jsonl {o}/hy3-data/b.jsonl --swift-dataset {o}/hy3-data/b --max-length 4096

"""


def flags(p, ep: int) -> str:
    o = p["out"]
    return f"""megatron sft \\
  --model {p["model"]} \\
  --cached_dataset {o}/hy3-data/a {o}/hy3-data/b \\
  --output_dir {o} \\
  --template hy3 \\
  --tuner_type lora \\
  --custom_register_path {PLUGIN} \\
  --mtp_num_layers 0 \\
  --tensor_model_parallel_size 8 \\
  --sequence_parallel true \\
  --expert_model_parallel_size {ep} \\
  --max_length 4096 \\
  --moe_router_load_balancing_type none \\
  --megatron_extra_kwargs '{{"moe_router_bias_update_rate":0.0}}'"""


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def launch(tmp_path, capsys, p, recipe_text, *extra):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    rc = main(["launch", str(recipe), "--model", str(p["model"]), "--dataset", str(p["data"] / "a.jsonl"),
               str(p["data"] / "b.jsonl"), "--output-dir", str(p["out"]), "--dry-run", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_one_node_runs_megatron_sft_through_torchrun_env(tmp_path, capsys, clean_env, run_inputs):
    expected = encode_lines(run_inputs) + f"""# node 0 of 1
NPROC_PER_NODE=8 {ENV} \\
{flags(run_inputs, 8)}
"""
    assert launch(tmp_path, capsys, run_inputs, ONE_NODE) == expected


def test_two_nodes_from_ip_list(tmp_path, capsys, clean_env, run_inputs):
    clean_env.setenv("IP_LIST", "10.1.0.1,10.1.0.2")
    expected = encode_lines(run_inputs) + f"""# node 0 of 2: 10.1.0.1
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.1.0.1 MASTER_PORT=29500 {ENV} \\
{flags(run_inputs, 16)}

# node 1 of 2: 10.1.0.2
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.1.0.1 MASTER_PORT=29500 {ENV} \\
{flags(run_inputs, 16)}
"""
    assert launch(tmp_path, capsys, run_inputs, TWO_NODES) == expected


def test_two_nodes_under_slurm(tmp_path, capsys, clean_env, run_inputs):
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    clean_env.setenv("SLURM_NODEID", "1")
    clean_env.setenv("SLURM_NNODES", "2")
    expected = encode_lines(run_inputs) + f"""# node 0 of 2: gpu07
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu07 MASTER_PORT=6000 {ENV} \\
{flags(run_inputs, 16)}

# node 1 of 2: gpu08
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=gpu07 MASTER_PORT=6000 {ENV} \\
{flags(run_inputs, 16)}
"""
    assert launch(tmp_path, capsys, run_inputs, TWO_NODES, "--master-port", "6000") == expected


def test_nodes_from_nnodes_node_rank_master_addr(tmp_path, capsys, clean_env, run_inputs):
    for k, v in {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "head"}.items():
        clean_env.setenv(k, v)
    out = launch(tmp_path, capsys, run_inputs, TWO_NODES, "--launcher", "env")
    assert "# node 0 of 2: head\nNPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=head MASTER_PORT=29500" in out
    assert "# node 1 of 2\nNPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=head" in out


def test_recipe_env_and_overrides_reach_the_command(tmp_path, capsys, clean_env, run_inputs):
    text = ONE_NODE + "env:\n  NCCL_SOCKET_IFNAME: eth0\n"
    out = launch(tmp_path, capsys, run_inputs, text, "--set", "max_length=8192", "--set", "lora_rank=16")
    assert "NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=eth0 \\\n" in out
    assert "  --max_length 8192 \\\n" in out and out.endswith("  --lora_rank 16\n")


def test_export_builds_megatron_export_with_the_parallel_sizes(tmp_path, capsys, clean_env, hy3_model):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ONE_NODE)
    ckpt = tmp_path / "v0"
    ckpt.mkdir()
    rc = main(["launch", str(recipe), "--export", "to-hf", "--mcore-model", str(ckpt), "--model", str(hy3_model),
               "--output-dir", "/ckpt/v0-hf", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.endswith(f"""megatron export \\
  --model {hy3_model} \\
  --mcore_model {ckpt} \\
  --output_dir /ckpt/v0-hf \\
  --to_hf true \\
  --custom_register_path {PLUGIN} \\
  --tensor_model_parallel_size 8 \\
  --expert_model_parallel_size 8 \\
  --sequence_parallel true \\
  --mtp_num_layers 0 \\
  --megatron_extra_kwargs '{{"moe_router_bias_update_rate":0.0}}'
""")


def test_launch_refuses_what_megatron_or_the_plan_would_reject(tmp_path, clean_env, hy3_model):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ONE_NODE)
    m = hy3_model
    assert_one_error(run_cli("launch", recipe, "--dataset", "d.jsonl", "--dry-run"), "--model")
    assert_one_error(run_cli("launch", recipe, "--model", m, "--dry-run"), "--dataset")
    assert_one_error(run_cli("launch", recipe, "--model", m, "--dataset", "d", "--set", "lora_rnk=4", "--dry-run"),
                     "lora_rnk", "lora_rank")
    bad = run_cli("launch", recipe, "--model", m, "--dataset", "d", "--set", "expert_model_parallel_size=5",
                  "--dry-run")
    assert_one_error(bad, "invalid layout", "--skip-plan")
    two = tmp_path / "two.yaml"
    two.write_text(TWO_NODES)
    assert_one_error(run_cli("launch", two, "--model", m, "--dataset", "d", "--dry-run"), "IP_LIST")
    assert_one_error(run_cli("launch", two, "--model", m, "--dataset", "d", "--dry-run",
                             env={"IP_LIST": "10.0.0.1,10.0.0.2,10.0.0.3"}), "3 node(s)", "planned for 2")


def test_ip_list_rank_comes_from_the_local_address():
    c = resolve_cluster("ip-list", 3, {"IP_LIST": "10.0.0.1, 10.0.0.2,10.0.0.3"}, local={"127.0.0.1", "10.0.0.3"})
    assert (c.master, c.this_rank, c.hosts) == ("10.0.0.1", 2, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    assert resolve_cluster("ip-list", 3, {"IP_LIST": "a,b,c", "LOCAL_IP": "b"}, local=set()).this_rank == 1
    assert resolve_cluster("ip-list", 3, {"IP_LIST": "a,b,c", "NODE_RANK": "0"}, local={"c"}).this_rank == 0
    assert resolve_cluster("ip-list", 3, {"IP_LIST": "a,b,c"}, local={"z"}).this_rank is None
    with pytest.raises(Hy3Error, match="twice"):
        resolve_cluster("ip-list", 2, {"IP_LIST": "a,a"}, local=set())


def test_slurm_host_lists_expand():
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("rack[1-2]-n[8-9]") == ["rack1-n8", "rack1-n9", "rack2-n8", "rack2-n9"]
    assert expand_hostlist("node9") == ["node9"]


def stand_ins(tmp_path, gpus: int = 8):
    """A stand-in `megatron` on PATH that records what it was started with, and a stand-in `nvidia-smi` that
    lists `gpus` GPUs."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.txt"
    fake = bindir / "megatron"
    fake.write_text(f'#!/bin/sh\necho "NPROC=$NPROC_PER_NODE NNODES=$NNODES RANK=$NODE_RANK '
                    f'MASTER=$MASTER_ADDR CONN=$CUDA_DEVICE_MAX_CONNECTIONS" > {record}\necho "$@" >> {record}\n')
    smi = bindir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f'echo "GPU {i}: NVIDIA H200 (UUID: GPU-{i:08d}-0000-0000-0000-000000000000)"\n'
                                           for i in range(gpus)))
    for f in (fake, smi):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}, record


def test_launch_execs_this_nodes_command(tmp_path, clean_env, hy3_model):
    env, record = stand_ins(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TWO_NODES)
    env.update({"IP_LIST": "10.1.0.1,10.1.0.2", "LOCAL_IP": "10.1.0.2"})
    proc = assert_ok(run_cli("launch", recipe, "--model", hy3_model, "--dataset", "org/some-dataset", env=env))
    assert "node 1 of 2" in proc.stderr
    first, second = record.read_text().splitlines()
    assert first == "NPROC=8 NNODES=2 RANK=1 MASTER=10.1.0.1 CONN=1"
    # the plugin's template even for a dataset id: ms-swift's own hy_v3 template would drop the reasoning
    assert second.startswith(f"sft --model {hy3_model} --dataset org/some-dataset --template hy3 --tuner_type lora "
                             f"--custom_register_path {PLUGIN} --mtp_num_layers 0")


def test_train_sh_runs_the_recipe_it_names():
    recipe = load_recipe(REPO / "recipes" / "lora-80g-2n-16k-mtp.yaml")
    env = dict(os.environ, IP_LIST="10.0.0.1,10.0.0.2", LOCAL_IP="10.0.0.2", MODEL="/m", DATASET="/d.jsonl",
               OUTPUT_DIR="/o", DRY_RUN="1")
    proc = subprocess.run(["bash", str(REPO / "launch" / "train.sh")], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    env_line, encode, cmd = proc.stdout.splitlines()
    assert env_line == "NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500"
    assert shlex.split(encode) == ["#", "node", "0", "first", "runs:", "hy3", "data", "encode", "--model", "/m",
                                   "/d.jsonl", "/o/hy3-data/d.jsonl", "--swift-dataset", "/o/hy3-data/d",
                                   "--max-length", str(recipe.args["max_length"])]
    argv = shlex.split(cmd)
    assert argv[:10] == ["megatron", "sft", "--model", "/m", "--cached_dataset", "/o/hy3-data/d", "--template", "hy3",
                         "--output_dir", "/o"]
    assert argv[10:] == to_cli(dict(recipe.args, custom_register_path=PLUGIN))
    env["LOCAL_IP"] = "10.9.9.9"
    proc = subprocess.run(["bash", str(REPO / "launch" / "train.sh")], capture_output=True, text=True, env=env,
                          timeout=30)
    assert proc.returncode == 1 and "set LOCAL_IP or NODE_RANK" in proc.stderr


# --- pre-flight: a dry run checks what a run checks (issue 21) ------------------------------------------

def dry(tmp_path, recipe_text=ONE_NODE, *args, env=None):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    return run_cli("launch", recipe, *args, "--dry-run", env=env)


def test_dry_run_checks_the_model_directory(tmp_path, clean_env, run_inputs, tiny_outer):
    rows = run_inputs["data"] / "a.jsonl"
    missing = tmp_path / "no-such-model"
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", missing, "--dataset", rows, "--output-dir", tmp_path / "o"),
                     f"--model {missing}: no such directory")
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", tiny_outer, "--dataset", rows, "--output-dir", tmp_path / "o"),
                     f"--model {tiny_outer}: the weights are in the outer layout", "hy3 convert outer-to-inner")
    no_tok = shutil.copytree(run_inputs["model"], tmp_path / "no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink()
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", no_tok, "--dataset", "org/data"), "no tokenizer")
    no_config = shutil.copytree(run_inputs["model"], tmp_path / "no-config")
    (no_config / "config.json").unlink()
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", no_config, "--dataset", "org/data"), "config.json", "not found")
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", run_inputs["model"], "--dataset", "org/data", "--mcore-model",
                         tmp_path / "no-mcore"), f"--mcore-model {tmp_path / 'no-mcore'}: no such directory")


def test_dry_run_checks_the_datasets_and_the_output_directory(tmp_path, clean_env, run_inputs):
    m = run_inputs["model"]
    missing = tmp_path / "missing.jsonl"
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", m, "--dataset", missing, "--output-dir", tmp_path / "o"),
                     f"--dataset {missing}: no such file")
    for text in ("", "\n \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text(text)
        assert_one_error(dry(tmp_path, ONE_NODE, "--model", m, "--dataset", empty, "--output-dir", tmp_path / "o"),
                         f"--dataset {empty}: empty")
    (tmp_path / "cached").mkdir()
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", m, "--dataset", tmp_path / "cached"), "an empty directory")
    rows = run_inputs["data"] / "a.jsonl"
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", m, "--dataset", rows, "--output-dir", a_file),
                     "exists and is not a directory")
    assert_one_error(dry(tmp_path, ONE_NODE, "--model", m, "--dataset", rows, "--output-dir", m / "runs"),
                     "lies inside the input")


def test_the_plan_uses_the_models_own_config(tmp_path, clean_env, tiny_inner):
    """The test recipe (TP8, EP8) fits the published Hy3, not the tiny model --model names (4 heads, 8 experts
    on 3 layers): planned for the bundled 295B config it would pass."""
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]}\n')
    proc = dry(tmp_path, ONE_NODE, "--model", tiny_inner, "--dataset", rows, "--output-dir", tmp_path / "o")
    assert_one_error(proc, "invalid layout", f"planned for {tiny_inner}'s config.json", "--skip-plan")
    assert "heads" in proc.stderr   # the plan itself, printed above the error line


@pytest.mark.parametrize("ip_list, message", [
    ("10.0.0.1,,999.1.1.1", "entry 2 is empty"),
    ("10.0.0.1,999.1.1.1", "entry 2, '999.1.1.1', is not an IP address or host name"),
    ("10.0.0.1,10.0.0.2,", "entry 3 is empty"),
    ("10.0.0.1,bad_host!", "entry 2, 'bad_host!', is not an IP address or host name"),
])
def test_ip_list_entries_are_hosts_and_none_is_empty(tmp_path, clean_env, run_inputs, ip_list, message):
    proc = dry(tmp_path, TWO_NODES, "--model", run_inputs["model"], "--dataset", "org/data", env={"IP_LIST": ip_list})
    assert_one_error(proc, message)
    assert resolve_cluster("ip-list", 2, {"IP_LIST": "gpu-01.cluster,fe80::1"}, local=set()).hosts == \
        ["gpu-01.cluster", "fe80::1"]


@pytest.mark.parametrize("gpus, visible, seen", [(4, None, "4 GPU(s)"), (8, "0,1", "2 GPU(s)"), (0, None, "0 GPU(s)")])
def test_a_real_run_needs_the_recipes_gpus_on_this_node(tmp_path, clean_env, hy3_model, gpus, visible, seen):
    env, record = stand_ins(tmp_path, gpus)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ONE_NODE)
    proc = run_cli("launch", recipe, "--model", hy3_model, "--dataset", "org/data", env=env)
    assert_one_error(proc, f"this node sees {seen}", "gpus_per_node")
    assert not record.exists()   # megatron never started


def test_dry_run_json_holds_every_nodes_command(tmp_path, clean_env, run_inputs):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TWO_NODES)
    proc = assert_ok(run_cli("launch", recipe, "--model", run_inputs["model"], "--dataset",
                             run_inputs["data"] / "a.jsonl", "--output-dir", run_inputs["out"], "--dry-run", "--json",
                             env={"IP_LIST": "10.1.0.1,10.1.0.2"}))
    d = json.loads(proc.stdout)
    assert [(n["rank"], n["host"], n["env"]["NODE_RANK"]) for n in d["nodes"]] == [(0, "10.1.0.1", "0"),
                                                                                  (1, "10.1.0.2", "1")]
    assert d["nodes"][0]["argv"][:4] == ["megatron", "sft", "--model", str(run_inputs["model"])]
    assert d["encode_first"] == [encode_lines(run_inputs).splitlines()[1][2:]]
