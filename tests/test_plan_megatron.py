"""`hy3 plan --json`'s exact parameters per pipeline stage against megatron-core's own Hy3 GPTModel,
built on the meta device for ranks of three layouts under a fake process group (tests/plan_meta_model.py)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO, assert_ok, run_python
from megatron_hy.cli import main
from megatron_hy.plan import load_recipe, with_overrides

pytestmark = pytest.mark.megatron

LAYOUTS = {
    # TP8 PP10 EP8, an even split, MTP off: 80 GPUs
    "full-80g-10n-4k": ("full-80g-10n-4k.yaml", []),
    # TP4 PP4 EP16 with an explicit layout string and the MTP layer (which brings its own embedding copy)
    "full-141g-8n-8k-mtp": ("full-141g-8n-8k-mtp.yaml", []),
    # TP2 PP4 VPP2 EP4 ETP2, uneven first/last stages, MTP on: 32 GPUs
    "vpp-etp-first-last": ("full-141g-8n-8k-mtp.yaml", [
        "tensor_model_parallel_size=2", "pipeline_model_parallel_size=4", "pipeline_model_parallel_layout=",
        "virtual_pipeline_model_parallel_size=2", "decoder_first_pipeline_num_layers=18",
        "decoder_last_pipeline_num_layers=22", "expert_model_parallel_size=4", "expert_tensor_parallel_size=2",
        "global_batch_size=64"]),
}
NODES = {"vpp-etp-first-last": 4}


def planned(name, capsys):
    path, sets = LAYOUTS[name]
    argv = ["plan", str(REPO / "recipes" / path), "--json"] + [x for s in sets for x in ("--set", s)]
    if name in NODES:
        argv += ["--nodes", str(NODES[name])]
    main(argv)                              # exit 1 when a layout does not fit: its counts stand all the same
    d = json.loads(capsys.readouterr().out)
    assert d["valid"], d["errors"]
    recipe = with_overrides(load_recipe(REPO / "recipes" / path), sets, NODES.get(name))
    args = {k: v for k, v in recipe.args.items() if v != ""}
    return d, args, recipe.cluster.world_size


def test_params_per_stage_equal_megatron_core_gptmodel_on_the_meta_device(tmp_path, capsys):
    jobs, plans = [], {}
    for name in LAYOUTS:
        d, args, world = planned(name, capsys)
        pp = args["pipeline_model_parallel_size"]
        per_stage = world // pp
        # the first and the last GPU of every stage: different TP and EP ranks of the same stage
        ranks = [r for p in range(pp) for r in (p * per_stage, (p + 1) * per_stage - 1)]
        jobs.append({"name": name, "world": world, "args": args, "ranks": ranks})
        plans[name] = d
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    assert_ok(run_python(REPO / "tests" / "plan_meta_model.py", tmp_path / "jobs.json", tmp_path / "out.json",
                         timeout=300))
    built = json.loads((tmp_path / "out.json").read_text())
    for name, d in plans.items():
        stages = d["params_by_stage"]
        seen_tp_ep = set()
        for got in built[name]:
            want = stages[got["pp_rank"]]
            assert got["params"] == want["params"], (name, got, want)
            assert got["expert_bias"] == want["expert_bias_buffer"], (name, got, want)
            seen_tp_ep.add((got["pp_rank"], got["tp_rank"], got["ep_rank"]))
        assert {p for p, _, _ in seen_tp_ep} == set(range(len(stages)))
        assert len(seen_tp_ep) == 2 * len(stages), seen_tp_ep     # two distinct TP/EP ranks per stage
        assert sum(s["params"] for s in stages) > 0


@pytest.mark.parametrize("name", ["full-141g-8n-8k-mtp"])
def test_json_per_stage_counts_are_integers_that_add_up_with_the_split(name, capsys):
    d, args, world = planned(name, capsys)
    for s in d["params_by_stage"]:
        assert isinstance(s["params"], int) and s["params"] == s["non_expert"] + s["expert"]
