"""Shared fixtures and helpers: tiny Hy3 checkpoints built once per session, and the real `hy3` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


# --- the real CLI, as a user runs it -------------------------------------------------------------

def run_cli(*args, env: dict | None = None, cwd=None, timeout: float = 120, kill_after_bytes: int | None = None,
            kill_signal: str = "KILL", kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`hy3 ARGS...` in a fresh process (the same interpreter and package as the tests). kill_after_bytes: the
    process sends itself SIG`kill_signal` once N bytes are written; kill_at: SIGKILL at that named point
    (tests/hooked_cli.py)."""
    if kill_after_bytes is None and kill_at is None:
        return run_python("-m", "megatron_hy.cli", *args, env=env, cwd=cwd, timeout=timeout)
    hooks = json.dumps({"after_bytes": kill_after_bytes, "signal": kill_signal, "at": kill_at})
    return run_python(Path(__file__).with_name("hooked_cli.py"), hooks, *args, env=env, cwd=cwd, timeout=timeout)


def run_python(*args, env: dict | None = None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=full_env,
                          cwd=cwd or REPO, timeout=timeout)


def assert_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def assert_one_error(proc: subprocess.CompletedProcess, *must_contain: str) -> str:
    """A user error: non-zero exit, exactly one `hy3: error:` line containing each given text, no traceback."""
    assert proc.returncode != 0, f"expected failure, got exit 0\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hy3: error:")]
    assert len(lines) == 1, f"expected one 'hy3: error:' line in stderr:\n{proc.stderr}"
    for text in must_contain:
        assert str(text) in lines[0], f"{text!r} not in: {lines[0]}"
    return lines[0]


# --- the environments `make setup` builds (Python 3.11 / megatron-core 0.16.1, Python 3.12 / 0.19.x and 0.18.0) ---

ENVIRONMENTS = {"mcore016": REPO / ".venv", "mcore019": REPO / ".venv-mcore019"}


def other_environment_hy3() -> Path:
    """Another release's `hy3`, for checks across releases (a checkpoint one release wrote, converted by the
    other): 0.16.1's under 0.17 and later (0.18.0, 0.19.x), 0.19.x's under 0.16.1."""
    from megatron_hy import mcore_versions as mv

    other = ENVIRONMENTS["mcore016" if mv.since(mv.MTP_LAYER_RENAMED) else "mcore019"]
    hy3 = other / "bin" / "hy3"
    if not hy3.exists():
        pytest.fail(f"{hy3} is missing: `make setup` builds every environment")
    return hy3


# --- reading checkpoints independently of the package (the safetensors library) ----------------

def load_tensors(root: Path) -> dict:
    """Every tensor of a checkpoint directory, read with the safetensors library."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(root).glob("*.safetensors")):
        for k, v in load_file(f).items():
            assert k not in out, f"{k} appears in two shards"
            out[k] = v
    return out


def same_bits(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def read_index(root: Path) -> dict:
    return json.loads((Path(root) / "model.safetensors.index.json").read_text())


def files_bytes(root: Path) -> dict[str, bytes]:
    """Relative path -> content, for every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def first_shard(root: Path) -> Path:
    return root / sorted(set(read_index(root)["weight_map"].values()))[0]


def rewrite(root: Path, key: str, value=None) -> Path:
    """Replace (or with value None, drop) one tensor in its shard and in the index, using safetensors."""
    from safetensors.torch import load_file, save_file

    index = read_index(root)
    shard = root / index["weight_map"][key]
    tensors = load_file(shard)
    if value is None:
        del tensors[key], index["weight_map"][key]
    else:
        tensors[key] = value
    save_file(tensors, shard, metadata={"format": "pt"})
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return shard


def tiny_config(**overrides):
    """The Hy3Config of `hy3 make-tiny`'s model (bf16), with TinySpec fields overridden."""
    from dataclasses import replace

    from megatron_hy.tiny import TinySpec

    return replace(TinySpec(), **overrides).config("bf16")


# --- tiny checkpoints, built once per session by transformers' HYV3ForCausalLM -------------------

@pytest.fixture(scope="session")
def tiny_inner(tmp_path_factory) -> Path:
    """Published (per-expert) layout, transformers' config spelling, seed 0. Treat as read-only."""
    from megatron_hy.tiny import TinySpec, write_tiny

    return write_tiny(tmp_path_factory.mktemp("fixtures") / "tiny-inner", TinySpec(), fmt="inner", seed=0)


@pytest.fixture(scope="session")
def tiny_outer(tmp_path_factory) -> Path:
    """The same model (seed 0) written directly in the fused layout by make-tiny. Treat as read-only."""
    from megatron_hy.tiny import TinySpec, write_tiny

    return write_tiny(tmp_path_factory.mktemp("fixtures") / "tiny-outer", TinySpec(), fmt="outer", seed=0)


@pytest.fixture(scope="session")
def tiny_tencent(tmp_path_factory) -> Path:
    """The same model (seed 0), inner layout, with Tencent's config.json spelling. Treat as read-only."""
    from megatron_hy.tiny import TinySpec, write_tiny

    return write_tiny(tmp_path_factory.mktemp("fixtures") / "tiny-tencent", TinySpec(), fmt="inner", seed=0,
                      config_style="tencent")


@pytest.fixture(scope="session")
def bf16_bias_round_trip(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 2-layer tiny Hy3 whose router expert bias is stored in bf16 (seed 5), through `hy3 convert
    hf-to-mcore` and back with mcore_to_hf (what `hy3 convert mcore-to-hf` runs; its CLI is tested in
    test_dist_ckpt.py): (hf, torch_dist, hf again). Treat as read-only."""
    from megatron_hy.convert.mcore_to_hf import mcore_to_hf
    from megatron_hy.tiny import TinySpec, write_tiny

    root = tmp_path_factory.mktemp("bf16-bias")
    hf = write_tiny(root / "hf", TinySpec(layers=2), "inner", seed=5, bias_dtype="bf16", tokenizer=False)
    assert_ok(run_cli("convert", "hf-to-mcore", hf, root / "mcore", "--quiet", timeout=600))
    mcore_to_hf(root / "mcore", root / "hf-again", hf, quiet=True)
    return hf, root / "mcore", root / "hf-again"


@pytest.fixture(scope="session")
def hy3_model(tmp_path_factory) -> Path:
    """A model directory of the published Hy3's size without weights: the bundled config.json, the stand-in
    tokenizer and an index naming every inner-layout tensor (no shard files). What `hy3 launch` pre-flights
    (config, tokenizer, layout) and plans for at full size. Read-only."""
    from megatron_hy.config import load_config
    from megatron_hy.data.tokenizer import write_standin_tokenizer
    from megatron_hy.mapping import expected_keys
    from megatron_hy.plan.planner import DEFAULT_CONFIG

    root = tmp_path_factory.mktemp("fixtures") / "Hy3"
    root.mkdir()
    shutil.copy(DEFAULT_CONFIG, root / "config.json")
    write_standin_tokenizer(root)
    keys = expected_keys(load_config(root), "inner")
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: "model-00001-of-00001.safetensors" for k in keys}}))
    return root


# --- a small valid recipe (launch and plan tests) ------------------------------------------------

TEST_RECIPE = """\
# test recipe, one node
cluster: {nodes: 1, gpus_per_node: 8, gpu_memory_gb: 141}
args:
  tuner_type: lora
  custom_register_path: megatron_hy/swift/plugin/ms_swift.py
  mtp_num_layers: 0
  tensor_model_parallel_size: 8
  sequence_parallel: true
  expert_model_parallel_size: 8
  max_length: 4096
  moe_router_load_balancing_type: none
  megatron_extra_kwargs: {moe_router_bias_update_rate: 0.0}
"""


# --- ms-swift and mcore-bridge, run for real on CPU (tests/swift_jobs.py) ------------------------

@pytest.fixture(scope="session")
def lora_base(tmp_path_factory) -> Path:
    """fp32 Hy3 with 4 layers (seed 21), so merged checkpoints carry the exact LoRA delta. Read-only."""
    from megatron_hy.tiny import TinySpec, write_tiny

    return write_tiny(tmp_path_factory.mktemp("fixtures") / "lora-base", TinySpec(layers=4), "inner", seed=21,
                      dtype="fp32")


@pytest.fixture(scope="session")
def swift_run(tmp_path_factory, tiny_inner, tiny_outer, tiny_tencent, lora_base):
    """One driver process running ms-swift's and mcore-bridge's Megatron code under TP1, TP2 and EP2
    (see tests/swift_jobs.py); its outputs (saved checkpoints, exports, LoRA adapters) and reports."""
    from swift_jobs import run_all

    return run_all(tmp_path_factory.mktemp("swift"), tiny_inner, tiny_outer, tiny_tencent, lora_base)


# --- megatron-core in 4 gloo processes: parity under the recipes' expert layout, then a training run ----------

@pytest.fixture(scope="session")
def megatron_world4(tmp_path_factory, lora_base):
    """One set of 4 processes (tests/mcore_jobs.py parity_then_train) on lora_base: the parity run under
    TP2 PP2 EP2 ETP1 from HF and from our torch_dist, then a 2-step megatron-core training run under
    PP2 x EP2 x DP2 that megatron-core saves with its optimizer state. The outputs, judged by the tests."""
    from types import SimpleNamespace

    from mcore_jobs import TrainJob, parity_then_train
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore
    from megatron_hy.megatron.harness import run_distributed
    from megatron_hy.megatron.parity import parity_job, random_tokens

    root = tmp_path_factory.mktemp("world4")
    hf_to_mcore(lora_base, root / "mcore", quiet=True)
    job = parity_job(lora_base, [("hf", lora_base), ("mcore", root / "mcore")], tp=2, pp=2, ep=2, etp=1, export=True)
    train = TrainJob(str(lora_base), str(root / "trained"), random_tokens(512, 2, 16, seed=1).tolist())
    ranks = run_distributed(parity_then_train, 4, job, train)
    return SimpleNamespace(job=job, parity=[r["parity"] for r in ranks], train_job=train,
                           train=[r["train"] for r in ranks], trained=root / "trained")
