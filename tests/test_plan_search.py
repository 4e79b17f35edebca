"""`hy3 plan --search`: the layouts that fit a cluster, best first by the step-time model; the seed's
hardware floors (Tencent's guide: full fine-tuning on 4 x 8 x 80 GB, LoRA on 1 x 8 x 80 GB); every layout
it returns passes `hy3 plan`; `--write-recipe` writes one that does; `--plot` writes a PNG."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import assert_ok, assert_one_error, run_cli
from megatron_hy.cli import main
from test_plan import NO_MTP

FLOOR = ["--search", "--nodes", "4", "--gpus-per-node", "8", "--gpu-mem", "80", "--seq", "4096"]
USABLE_80 = 79.6


def search(capsys, *argv) -> tuple[int, dict]:
    rc = main(["plan", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_full_finetuning_on_4x8x80_without_offload_fits_no_layout_and_says_why(capsys):
    rc, d = search(capsys, *FLOOR)
    assert rc == 1 and d["layouts"] == []
    assert "no layout fits" in d["reason"] and "leanest" in d["reason"] and "--host-mem" in d["reason"]
    assert set(d["considered"]) == {"too big for the GPU"}
    assert d["leanest"]["memory_per_gpu_gib"] > USABLE_80 and d["leanest"]["recompute"] == "full"
    # The proof by hand: bf16 weights, fp32 gradients and fp32 Adam states are 18 bytes per parameter;
    # spread perfectly over 32 GPUs that is already more than one GPU holds, whatever the layout.
    assert NO_MTP * 18 / 32 / 2 ** 30 > USABLE_80


def test_full_finetuning_on_4x8x80_fits_with_optimizer_offload_to_the_host(capsys, tmp_path):
    rc, d = search(capsys, *FLOOR, "--host-mem", "2048")
    assert rc == 0 and d["reason"] is None and 1 <= len(d["layouts"]) <= 10
    for entry in d["layouts"]:
        assert entry["args"]["optimizer_cpu_offload"] is True and entry["fits_gpu"] and entry["fits_host"]
        assert entry["memory_per_gpu_gib"] <= USABLE_80
    times = [e["step_time_model"]["seconds"] for e in d["layouts"]]
    headroom = [e["verdict"] == "fits" for e in d["layouts"]]
    assert headroom == sorted(headroom, reverse=True)         # headroom first, then by modelled time
    for flag in (True, False):
        group = [t for t, h in zip(times, headroom) if h == flag]
        assert group == sorted(group)
    # every layout it returns passes `hy3 plan` as a recipe of its own
    for entry in d["layouts"]:
        f = tmp_path / f"layout{entry['rank']}.yaml"
        f.write_text(yaml.safe_dump({"cluster": {"nodes": 4, "gpus_per_node": 8, "gpu_memory_gb": 80,
                                                 "host_memory_gb": 2048}, "args": entry["args"]}))
        rc, p = search(capsys, str(f))
        assert rc == 0 and p["fits"] and p["warnings"] == [] and p["errors"] == [], (entry["layout_args"], p)
        assert p["memory_per_gpu_gib"] == entry["memory_per_gpu_gib"]


def test_too_little_host_memory_for_the_offload_is_the_reason(capsys):
    rc, d = search(capsys, *FLOOR, "--host-mem", "512")
    assert rc == 1 and d["layouts"] == [] and "host memory per node" in d["reason"]


def test_lora_on_one_node_of_8x80_meets_the_seed_floor(capsys):
    rc, d = search(capsys, "--search", "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem", "80", "--seq", "4096",
                   "--lora", "--top", "3")
    assert rc == 0 and d["layouts"][0]["verdict"] == "fits"
    best = d["layouts"][0]["layout_args"]
    assert best["tensor_model_parallel_size"] == 8 and best["expert_model_parallel_size"] == 8


def test_the_search_is_deterministic(capsys):
    argv = ["--search", "--nodes", "8", "--gpus-per-node", "8", "--gpu-mem", "141", "--seq", "8192", "--mtp"]
    first = search(capsys, *argv)
    assert first[0] == 0 and first == search(capsys, *argv)
    assert all(e["args"]["mtp_num_layers"] == 1 for e in first[1]["layouts"])


def test_written_recipe_plans_clean_and_is_never_overwritten(tmp_path):
    out = tmp_path / "best.yaml"
    proc = assert_ok(run_cli("plan", *FLOOR, "--host-mem", "2048", "--write-recipe", out))
    assert f"wrote {out}: the best layout as a recipe" in proc.stderr   # `wrote` lines go to stderr (README)
    d = json.loads(assert_ok(run_cli("plan", out, "--json")).stdout)
    assert d["fits"] and d["warnings"] == [] and d["errors"] == []
    assert d["cluster"]["host_memory_gb"] == 2048
    assert out.read_text().startswith("# Hy3 full fine-tuning")
    assert_one_error(run_cli("plan", *FLOOR, "--host-mem", "2048", "--write-recipe", out), "already exists")


def test_search_needs_its_cluster_flags():
    assert_one_error(run_cli("plan", "--search", "--nodes", "4", "--gpus-per-node", "8", "--gpu-mem", "80"),
                     "--seq")
    assert_one_error(run_cli("plan"), "RECIPE", "--search")


def _png(path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 500


@pytest.mark.parametrize("mode", ["recipe", "search"])
def test_plot_writes_a_png(tmp_path, capsys, mode):
    from conftest import REPO

    png = tmp_path / "plan.png"
    argv = [str(REPO / "recipes" / "full-80g-4n-4k-offload.yaml")] if mode == "recipe" else \
        [*FLOOR, "--host-mem", "2048", "--top", "4"]
    rc = main(["plan", *argv, "--plot", str(png)])
    capsys.readouterr()
    assert rc == 0
    _png(png)
    if mode == "recipe":
        assert_one_error(run_cli("plan", *argv, "--plot", png), "already exists")
        assert_one_error(run_cli("plan", *argv, "--plot", tmp_path / "plan.txt"), ".png")


def test_search_plot_tells_the_layouts_apart_and_gives_each_bar_its_total():
    """Two layouts that differ only in recompute (or offload) get different labels; each bar carries its total;
    the labels and totals are the table's (issue 21)."""
    from megatron_hy.config import load_config
    from megatron_hy.plan.planner import DEFAULT_CONFIG
    from megatron_hy.plan.plot import search_figure
    from megatron_hy.plan.search import Spec, base_from, recompute_name, search as run_search

    spec = Spec(4, 8, 80.0, 4096, False, False, 2048.0, None, 6, base_from(None, 4096, False, False))
    plans = run_search(spec, load_config(DEFAULT_CONFIG)).layouts
    fig = search_figure(plans, "4 x 8 x 80 GB")
    gpu = fig.axes[0]
    labels = [t.get_text() for t in gpu.get_xticklabels()]
    assert len(labels) == len(plans) == len(set(labels))
    for label, p in zip(labels, plans):
        assert "\nrc " + recompute_name(p.recipe.args).removeprefix("recompute ") + "\n" in label, label
        assert f"offload {p.precision.offload:.0%}" in label
    totals = [t.get_text() for t in gpu.texts]
    assert totals == [f"{p.worst.total_gib:.1f}" for p in plans]
