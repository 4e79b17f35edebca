"""`hy3 launch`: the exact per-node commands for one node, IP_LIST, Slurm and NNODES/NODE_RANK; the exec
of this node's command; launch/train.sh agreeing with the recipe it mirrors."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest

from conftest import TEST_RECIPE, REPO, assert_ok, assert_one_error, run_cli
from megatron_hy.cli import main
from megatron_hy.errors import Hy3Error
from megatron_hy.launch import expand_hostlist, resolve_cluster
from megatron_hy.plan import load_recipe
from megatron_hy.plan.recipe import to_cli
from megatron_hy.plugins import swift_plugin_path

LAUNCH_VARS = ("IP_LIST", "LOCAL_IP", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_NODELIST",
               "SLURM_NODEID", "SLURM_NNODES", "SLURM_JOB_ID")

ONE_NODE = TEST_RECIPE
TWO_NODES = ONE_NODE.replace("nodes: 1", "nodes: 2").replace("expert_model_parallel_size: 8",
                                                              "expert_model_parallel_size: 16")
ENV = "CUDA_DEVICE_MAX_CONNECTIONS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True NCCL_DEBUG=WARN"


PLUGIN = str(swift_plugin_path())
# Hy3 rows are encoded into the run's directory first and trained as ms-swift cached datasets
ENCODE = """# node 0 first encodes the Hy3 rows into the run's directory (the other nodes wait for them):
# hy3 data encode --tokenizer /models/Hy3 /data/a.jsonl /shared/out/hy3-data/a.jsonl --swift-dataset /shared/out/hy3-data/a --max-length 4096
# hy3 data encode --tokenizer /models/Hy3 /data/b.jsonl /shared/out/hy3-data/b.jsonl --swift-dataset /shared/out/hy3-data/b --max-length 4096

"""


def flags(ep: int) -> str:
    return f"""megatron sft \\
  --model /models/Hy3 \\
  --cached_dataset /shared/out/hy3-data/a /shared/out/hy3-data/b \\
  --output_dir /shared/out \\
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


def launch(tmp_path, capsys, recipe_text, *extra):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    rc = main(["launch", str(recipe), "--model", "/models/Hy3", "--dataset", "/data/a.jsonl", "/data/b.jsonl",
               "--output-dir", "/shared/out", "--dry-run", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def test_one_node_runs_megatron_sft_through_torchrun_env(tmp_path, capsys, clean_env):
    expected = ENCODE + f"""# node 0 of 1
NPROC_PER_NODE=8 {ENV} \\
{flags(8)}
"""
    assert launch(tmp_path, capsys, ONE_NODE) == expected


def test_two_nodes_from_ip_list(tmp_path, capsys, clean_env):
    clean_env.setenv("IP_LIST", "10.1.0.1,10.1.0.2")
    expected = ENCODE + f"""# node 0 of 2: 10.1.0.1
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=10.1.0.1 MASTER_PORT=29500 {ENV} \\
{flags(16)}

# node 1 of 2: 10.1.0.2
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=10.1.0.1 MASTER_PORT=29500 {ENV} \\
{flags(16)}
"""
    assert launch(tmp_path, capsys, TWO_NODES) == expected


def test_two_nodes_under_slurm(tmp_path, capsys, clean_env):
    clean_env.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    clean_env.setenv("SLURM_NODEID", "1")
    clean_env.setenv("SLURM_NNODES", "2")
    expected = ENCODE + f"""# node 0 of 2: gpu07
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=gpu07 MASTER_PORT=6000 {ENV} \\
{flags(16)}

# node 1 of 2: gpu08
NPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=gpu07 MASTER_PORT=6000 {ENV} \\
{flags(16)}
"""
    assert launch(tmp_path, capsys, TWO_NODES, "--master-port", "6000") == expected


def test_nodes_from_nnodes_node_rank_master_addr(tmp_path, capsys, clean_env):
    for k, v in {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "head"}.items():
        clean_env.setenv(k, v)
    out = launch(tmp_path, capsys, TWO_NODES, "--launcher", "env")
    assert "# node 0 of 2: head\nNPROC_PER_NODE=8 NNODES=2 NODE_RANK=0 MASTER_ADDR=head MASTER_PORT=29500" in out
    assert "# node 1 of 2\nNPROC_PER_NODE=8 NNODES=2 NODE_RANK=1 MASTER_ADDR=head" in out


def test_recipe_env_and_overrides_reach_the_command(tmp_path, capsys, clean_env):
    text = ONE_NODE + "env:\n  NCCL_SOCKET_IFNAME: eth0\n"
    out = launch(tmp_path, capsys, text, "--set", "max_length=8192", "--set", "lora_rank=16")
    assert "NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=eth0 \\\n" in out
    assert "  --max_length 8192 \\\n" in out and out.endswith("  --lora_rank 16\n")


def test_export_builds_megatron_export_with_the_parallel_sizes(tmp_path, capsys, clean_env):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ONE_NODE)
    rc = main(["launch", str(recipe), "--export", "to-hf", "--mcore-model", "/ckpt/v0", "--model", "/models/Hy3",
               "--output-dir", "/ckpt/v0-hf", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.endswith(f"""megatron export \\
  --model /models/Hy3 \\
  --mcore_model /ckpt/v0 \\
  --output_dir /ckpt/v0-hf \\
  --to_hf true \\
  --custom_register_path {PLUGIN} \\
  --tensor_model_parallel_size 8 \\
  --expert_model_parallel_size 8 \\
  --sequence_parallel true \\
  --mtp_num_layers 0 \\
  --megatron_extra_kwargs '{{"moe_router_bias_update_rate":0.0}}'
""")


def test_launch_refuses_what_megatron_or_the_plan_would_reject(tmp_path, clean_env):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(ONE_NODE)
    assert_one_error(run_cli("launch", recipe, "--dataset", "d.jsonl", "--dry-run"), "--model")
    assert_one_error(run_cli("launch", recipe, "--model", "/m", "--dry-run"), "--dataset")
    assert_one_error(run_cli("launch", recipe, "--model", "/m", "--dataset", "d", "--set", "lora_rnk=4", "--dry-run"),
                     "lora_rnk", "lora_rank")
    bad = run_cli("launch", recipe, "--model", "/m", "--dataset", "d", "--set", "expert_model_parallel_size=5",
                  "--dry-run")
    assert_one_error(bad, "invalid layout", "--skip-plan")
    two = tmp_path / "two.yaml"
    two.write_text(TWO_NODES)
    assert_one_error(run_cli("launch", two, "--model", "/m", "--dataset", "d", "--dry-run"), "IP_LIST")
    assert_one_error(run_cli("launch", two, "--model", "/m", "--dataset", "d", "--dry-run",
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


def test_launch_execs_this_nodes_command(tmp_path, clean_env):
    # a stand-in `megatron` on PATH records what it was started with
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "record.txt"
    fake = bindir / "megatron"
    fake.write_text(f'#!/bin/sh\necho "NPROC=$NPROC_PER_NODE NNODES=$NNODES RANK=$NODE_RANK '
                    f'MASTER=$MASTER_ADDR CONN=$CUDA_DEVICE_MAX_CONNECTIONS" > {record}\necho "$@" >> {record}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TWO_NODES)
    env = {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "IP_LIST": "10.1.0.1,10.1.0.2", "LOCAL_IP": "10.1.0.2"}
    proc = assert_ok(run_cli("launch", recipe, "--model", "/models/Hy3", "--dataset", "org/some-dataset", env=env))
    assert "node 1 of 2" in proc.stderr
    first, second = record.read_text().splitlines()
    assert first == "NPROC=8 NNODES=2 RANK=1 MASTER=10.1.0.1 CONN=1"
    assert second.startswith(f"sft --model /models/Hy3 --dataset org/some-dataset --tuner_type lora "
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
    assert shlex.split(encode) == ["#", "node", "0", "first", "runs:", "hy3", "data", "encode", "--tokenizer", "/m",
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
