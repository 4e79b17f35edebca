"""The megatron-core releases hy3 supports: each difference named once (megatron_hy/mcore_versions.py) and true of
the installed release, and installing the project keeps the megatron-core a user already has."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO, tiny_config
from megatron_hy import mcore_versions as mv


def test_parse_and_compare_releases():
    assert mv.parse("0.19.2") == (0, 19, 2)
    assert mv.parse("0.16.1+cu130") == (0, 16, 1)
    assert mv.parse("0.19.0rc1") == (0, 19, 0)
    assert mv.since(mv.MOE_SPEC_IS_PARTIAL, "0.18.0") and not mv.since(mv.MOE_SPEC_IS_PARTIAL, "0.17.0")
    assert mv.since(mv.NO_COMMON_PT, "0.19.2") and not mv.since(mv.NO_COMMON_PT, "0.18.1")
    assert [mv.supported(v) for v in ("0.16.0", "0.16.1", "0.18.0", "0.19.2", "0.20.0")] == [False, True, True, True,
                                                                                             False]


def test_known_bugs_match_only_the_releases_and_settings_they_affect():
    bug = "mtp+full_recompute"
    assert [b.when for b in mv.bugs_for({bug}, "0.18.0")] == [bug]
    assert [b.when for b in mv.bugs_for({bug}, "0.18.1")] == [bug]
    assert mv.bugs_for({bug}, "0.16.1") == mv.bugs_for({bug}, "0.19.0") == []
    assert mv.bugs_for(set(), "0.18.0") == []


@pytest.mark.megatron
def test_the_installed_release_is_supported_and_has_the_changes_its_code_shows():
    """Each named difference, checked against the installed megatron-core's own code."""
    import inspect

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_layer_specs
    from megatron.core.transformer import multi_token_prediction as mtp

    from megatron_hy.megatron.model import make_transformer_config

    assert mv.supported(mv.installed())
    tconfig = make_transformer_config(tiny_config(), use_cpu_initialization=True)
    mlps = [s.submodules.mlp for s in get_gpt_decoder_layer_specs(tconfig, False, normalization="RMSNorm")]
    partial_mlp = any(type(m).__name__ == "partial" for m in mlps)
    assert partial_mlp == mv.since(mv.MOE_SPEC_IS_PARTIAL)
    layer_src = inspect.getsource(mtp.MultiTokenPredictionLayer.__init__)
    assert ("self.mtp_model_layer" in layer_src) == mv.since(mv.MTP_LAYER_RENAMED)
    block_src = inspect.getsource(mtp.MultiTokenPredictionBlock.sharded_state_dict)
    assert ("super().sharded_state_dict" in block_src) != mv.since(mv.MTP_NO_CORE_ATTENTION_EXTRA_STATE)


@pytest.mark.megatron
def test_installing_the_project_keeps_the_installed_megatron_core():
    """What `pip install megatron-hy` does in an environment (a container) that has megatron-core already: resolved
    against the package index, nothing but the project itself would change."""
    uv = REPO / ".venv" / "bin" / "uv"
    proc = subprocess.run([str(uv), "pip", "install", "--dry-run", "--no-build-isolation", "--python", sys.executable,
                           str(REPO)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    assert proc.returncode == 0, proc.stderr
    changes = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()[:2] in ("+ ", "- ")]
    assert changes and all("megatron-hy" in c for c in changes), changes


def _recipe_warnings(name: str, version: str, **changes) -> list[str]:
    from megatron_hy.plan import load_recipe
    from megatron_hy.plan.planner import _known_megatron_bugs

    warnings: list[str] = []
    _known_megatron_bugs({**load_recipe(REPO / "recipes" / f"{name}.yaml").args, **changes}, warnings, version)
    return warnings


def test_plan_names_the_known_bug_a_recipe_would_meet_on_a_release():
    """MTP with full recompute: megatron-core 0.18.0 and 0.18.1 fail in the MTP layer's recompute; 0.16.1 can give a
    NaN MTP loss; 0.19 has neither. A recipe without MTP meets none. Each note says that ms-swift runs avoid it."""
    mtp_full = "full-141g-8n-64k-cp-mtp"
    for version in ("0.18.0", "0.18.1"):
        (w,) = _recipe_warnings(mtp_full, version)
        assert f"megatron-core {version}" in w and "_checkpointed_forward" in w and "fixed in 0.19.0" in w
        assert "not affected" in w and "plain Megatron-LM" in w
    assert _recipe_warnings(mtp_full, "0.19.2") == []
    assert "MTP loss is NaN" in _recipe_warnings(mtp_full, "0.16.1")[0]
    assert _recipe_warnings(mtp_full, "0.18.0", recompute_granularity="selective") == []
    assert _recipe_warnings(mtp_full, "0.16.1", mtp_num_layers=0) == []
    assert _recipe_warnings("full-96g-16n-32k-cp", "0.18.0") == []          # full recompute, no MTP


def test_plan_and_launch_print_the_installed_releases_notes(tmp_path, hy3_model):
    from conftest import assert_ok, run_cli

    mv.installed.cache_clear()
    name = "full-141g-8n-8k-mtp"
    expected = _recipe_warnings(name, mv.installed())
    plan = assert_ok(run_cli("plan", name))
    assert [ln for ln in plan.stdout.splitlines() if "megatron-core" in ln and "installed" in ln] == \
        [f"note     {w}" for w in expected]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    env = {k: "" for k in ("IP_LIST", "NNODES", "NODE_RANK", "SLURM_JOB_NODELIST", "SLURM_NNODES")}
    hosts = ",".join(f"10.0.0.{i}" for i in range(1, 9))   # the recipe's 8 nodes
    launch = assert_ok(run_cli("launch", name, "--model", hy3_model, "--dataset", rows, "--output-dir",
                               tmp_path / "run", "--ip-list", hosts, "--dry-run", env=env))
    assert [ln for ln in launch.stderr.splitlines() if "megatron-core" in ln and "installed" in ln] == \
        [f"hy3 launch: note: {w}" for w in expected]
