"""The shipped recipes: each passes `hy3 plan` for the cluster it states, with flags ms-swift accepts,
the Hy3 MoE settings, a name that tells the truth, and together they cover the axes users ask for."""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import replace

import pytest

from conftest import REPO, assert_ok, assert_one_error, run_cli, run_python
from megatron_hy.plan import load_recipe, plan_recipe
from megatron_hy.swift.args import check_args

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
NAME = re.compile(r"^(lora|full)-(80|96|141)g-(\d+)n-(\d+)k(-cp)?(-mtp)?(-offload)?$")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_passes_plan_for_its_own_cluster(path):
    r = load_recipe(path)
    assert check_args(r.args, "sft") == []
    plan = plan_recipe(r)
    assert plan.ok, plan.errors
    assert plan.warnings == []
    assert plan.worst.total_gib <= plan.capacity_gib


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_carries_hy3_moe_settings_and_a_header(path):
    r = load_recipe(path)
    a = r.args
    assert r.description.startswith("Hy3 ") and len(r.description.splitlines()) >= 2
    assert a["moe_router_load_balancing_type"] == "none" and a["moe_aux_loss_coeff"] == 0
    assert a["megatron_extra_kwargs"] == {"moe_router_score_function": "sigmoid",
                                          "moe_router_enable_expert_bias": True,
                                          "moe_router_bias_update_rate": 0.0}
    assert a["moe_grouped_gemm"] is True and a["moe_token_dispatcher_type"] == "alltoall"
    for path_key in ("model", "mcore_model", "dataset", "output_dir"):
        assert path_key not in a          # paths come from `hy3 launch --model/--dataset/...`


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_name_matches_its_contents(path):
    m = NAME.match(path.stem)
    assert m, f"{path.name}: name should be TUNER-MEMg-NODESn-SEQk[-cp][-mtp][-offload]"
    tuner, mem, nodes, seq_k, cp, mtp, offload = m.groups()
    r = load_recipe(path)
    assert r.args["tuner_type"] == tuner
    assert r.cluster.gpu_memory_gb == int(mem) and r.cluster.nodes == int(nodes) and r.cluster.gpus_per_node == 8
    assert r.args["max_length"] == int(seq_k) * 1024
    assert (r.args.get("context_parallel_size", 1) > 1) == bool(cp)
    assert bool(r.args.get("mtp_num_layers")) == bool(mtp)
    assert bool(r.args.get("optimizer_cpu_offload")) == bool(offload)
    if offload:
        assert r.cluster.host_memory_gb, "an offload recipe states the host memory it was planned for"


def test_recipes_cover_tuners_gpus_lengths_and_mtp():
    rs = [load_recipe(p) for p in RECIPES]
    assert {r.args["tuner_type"] for r in rs} == {"lora", "full"}
    for tuner in ("lora", "full"):
        assert {r.cluster.gpu_memory_gb for r in rs if r.args["tuner_type"] == tuner} == {80, 96, 141}
    lengths = {r.args["max_length"] for r in rs}
    assert min(lengths) == 4096 and max(lengths) == 262144
    for r in rs:
        if r.args["max_length"] >= 65536:
            assert r.args.get("context_parallel_size", 1) > 1, r.path
    assert {bool(r.args.get("mtp_num_layers")) for r in rs} == {True, False}


@pytest.mark.parametrize("name", ["full-80g-10n-4k", "full-96g-8n-4k", "full-141g-6n-4k"])
def test_smallest_full_finetune_recipes_need_their_node_count(name):
    # "Smallest" means the fewest nodes at which the planner says "fits" with its 8% headroom (not "tight"),
    # with every optimizer state on the GPU (the -offload recipe moves them to the host).
    # With one node fewer, no layout of the memory-lean family does: TP of 2, 4 or 8, whole-layer
    # recomputation, every pipeline depth that divides the 80 layers, the widest expert parallelism the
    # ranks of a stage allow.
    r = load_recipe(REPO / "recipes" / f"{name}.yaml")
    nodes = r.cluster.nodes - 1
    world = nodes * 8
    tried = 0
    for tp in (2, 4, 8):
        for pp in (1, 2, 4, 5, 8, 10, 16, 20):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            ep = max(e for e in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 192) if (tp * dp) % e == 0)
            args = dict(r.args, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                        expert_model_parallel_size=ep, global_batch_size=dp * pp * 4)
            args.pop("pipeline_model_parallel_layout", None)
            plan = plan_recipe(replace(r, cluster=replace(r.cluster, nodes=nodes), args=args))
            assert plan.valid, plan.errors
            assert plan.verdict in ("does not fit (GPU memory)", "fits (tight)"), \
                f"{name} fits on {nodes} nodes with TP={tp} PP={pp} EP={ep}"
            tried += 1
    assert tried >= 3


# --- bundled recipes, by name, from any directory (issue 21) ----------------------------------------------

def test_a_bundled_recipe_is_found_by_name_from_any_directory(tmp_path):
    """From a directory that is not the checkout, `hy3 plan NAME` (and NAME.yaml, and the README's
    recipes/NAME.yaml) finds the recipe shipped in the package."""
    ref = json.loads(assert_ok(run_cli("plan", REPO / "recipes" / "lora-80g-1n-4k.yaml", "--json")).stdout)
    for given in ("lora-80g-1n-4k", "lora-80g-1n-4k.yaml", "recipes/lora-80g-1n-4k.yaml"):
        d = json.loads(assert_ok(run_cli("plan", given, "--json", cwd=tmp_path)).stdout)
        assert d["params_by_stage"] == ref["params_by_stage"] and d["fits"], given
    assert_one_error(run_cli("plan", "lora-80g-1n-5k", cwd=tmp_path), "lora-80g-1n-5k: recipe not found",
                     "hy3 plan --list", "lora-80g-1n-4k")


def test_plan_list_names_every_bundled_recipe(tmp_path):
    text = assert_ok(run_cli("plan", "--list", cwd=tmp_path)).stdout
    d = json.loads(assert_ok(run_cli("plan", "--list", "--json", cwd=tmp_path)).stdout)
    assert [r["name"] for r in d["recipes"]] == [p.stem for p in RECIPES]
    for p in RECIPES:
        line = next(ln for ln in text.splitlines() if ln.startswith(p.stem + " "))
        assert load_recipe(p).description.splitlines()[0] in line


def test_launch_takes_a_bundled_recipe_by_name(tmp_path, hy3_model):
    proc = assert_ok(run_cli("launch", "lora-80g-1n-4k", "--model", hy3_model, "--dataset", "org/data",
                             "--dry-run", cwd=tmp_path))
    assert "megatron sft" in proc.stdout and "--tensor_model_parallel_size 8" in proc.stdout


def test_recipes_ship_in_the_wheel(tmp_path):
    """A wheel built from this checkout holds the recipes (megatron_hy/recipes links to recipes/, and setuptools
    copies the files): installed outside the checkout, `hy3 plan --list` and `hy3 plan NAME` find them."""
    import shutil

    src, wheels, site = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("megatron_hy", "recipes"):   # the link stays a link, as git checks it out
        shutil.copytree(REPO / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    assert (src / "megatron_hy" / "recipes").is_symlink()
    build = run_python("-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, src,
                       timeout=600)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("megatron_hy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert sorted(n for n in z.namelist() if n.startswith("megatron_hy/recipes/")) == \
            [f"megatron_hy/recipes/{p.name}" for p in RECIPES]
    assert_ok(run_python("-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel, timeout=600))
    env = {"PYTHONPATH": str(site)}   # ahead of the editable install of this checkout
    where = assert_ok(run_python("-c", "import megatron_hy; print(megatron_hy.__file__)", env=env, cwd=tmp_path))
    assert where.stdout.strip().startswith(str(site))
    listed = json.loads(assert_ok(run_python("-m", "megatron_hy.cli", "plan", "--list", "--json", env=env,
                                             cwd=tmp_path)).stdout)
    assert [r["name"] for r in listed["recipes"]] == [p.stem for p in RECIPES]
    assert all(r["path"].startswith(str(site)) for r in listed["recipes"])
    assert_ok(run_python("-m", "megatron_hy.cli", "plan", "lora-80g-1n-4k", env=env, cwd=tmp_path))
