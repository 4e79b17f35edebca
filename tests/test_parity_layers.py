"""`hy3 verify parity --layers`, `--dtype bf16` and `--device`, on a CPU (gloo processes).

A model of some decoder layers (plus embedding, final norm, output layer and the MTP layer) is built in
megatron-core and in transformers and compared. That it really is the subset is checked against a checkpoint
sliced here by the test, independently of the package's renaming: its tensors are the checkpoint's chosen
layers renumbered, read with the safetensors library; the Megatron model holds exactly those bytes, and
transformers' from_pretrained on it gives the same logits as the package's reference. And the whole model's
logits differ, so skipping layers is not a no-op.

GPU runs (`--device cuda`, NCCL, the transformer-engine spec) are not tested here: there is no GPU in CI.
What is tested of them is the setup a CPU can check: the TransformerConfig fields chosen for CUDA, the
process start method, and the refusal when no GPU is visible.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cli_inprocess import hy3
from conftest import assert_ok, assert_one_error, load_tensors, rewrite, run_cli, same_bits
from megatron_helpers import assemble_hf
from megatron_hy.formats.hf_checkpoint import HFCheckpoint
from megatron_hy.megatron.parity import (BF16_MIN_MEAN_COSINE, BF16_MIN_TOP1, TOLERANCE, compare, run_parity)
from megatron_hy.tiny import TinySpec, write_tiny

pytestmark = [pytest.mark.slow, pytest.mark.megatron]

# Hy3's attention is 64 heads x 128 = 8192 wide on a 4096 hidden; here 4 heads x 32 = 128 on 64.
WIDE_HEADS = TinySpec(layers=3, heads=4, kv_heads=2, head_dim=32)


def sliced(src: Path, layers: list[int], out: Path) -> Path:
    """The checkpoint of just these decoder layers, renumbered 0.., with the MTP layers after them: written
    from src's tensors with the safetensors library and a config.json edited by hand (no package code)."""
    from safetensors.torch import save_file

    config = json.loads((src / "config.json").read_text())
    n = config["num_hidden_layers"]
    new = {old: j for j, old in enumerate(layers)}
    new.update({n + k: len(layers) + k for k in range(config.get("num_nextn_predict_layers", 0))})
    tensors = {}
    for key, t in load_tensors(src).items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", key)
        if m is None:
            tensors[key] = t
        elif int(m[1]) in new:
            tensors[f"model.layers.{new[int(m[1])]}.{m[2]}"] = t
    out.mkdir(parents=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config["num_hidden_layers"] = len(layers)
    config["mlp_layer_types"] = [config["mlp_layer_types"][i] for i in layers]
    (out / "config.json").write_text(json.dumps(config))
    return out


def to_mcore(hf: Path, out: Path) -> Path:
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore

    hf_to_mcore(hf, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """3 decoder layers (0 dense, 1 and 2 MoE) and an MTP layer, bf16, as HF and as our torch_dist."""
    root = tmp_path_factory.mktemp("layers")
    hf = write_tiny(root / "hf", TinySpec(), "inner", seed=11, tokenizer=False)
    return hf, to_mcore(hf, root / "mcore")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """heads x head_dim (128) != hidden (64), in the fused (outer) layout, as HF and as our torch_dist."""
    root = tmp_path_factory.mktemp("wide")
    hf = write_tiny(root / "hf", WIDE_HEADS, "outer", seed=12, tokenizer=False)
    return hf, to_mcore(hf, root / "mcore")


@pytest.fixture(scope="module")
def skip_one(tiny):
    """Layers 0 and 2 of `tiny` (layer 1 skipped), from HF and from torch_dist, in one process."""
    hf, mcore = tiny
    results, ranks = run_parity(hf, [("hf", hf), ("mcore", mcore)], layers=[0, 2], export=True)
    return results, ranks


def test_skipping_a_layer_from_hf_and_torch_dist(tiny, skip_one, tmp_path):
    hf, _ = tiny
    results, ranks = skip_one
    assert [r.source for r in results] == ["hf", "mcore"]
    for res in results:
        assert res.passed and res.max_rel_err <= TOLERANCE and res.mtp_max_rel_err <= TOLERANCE, res
        assert (res.layers, res.device, res.dtype, res.spec) == ([0, 2], "cpu", "fp32", "local")
        # the router's counts, under the checkpoint's layer numbers: layer 2 (Megatron's 3), the MTP layer (4)
        assert sorted(res.expert_tokens) == ["3", "4"] and res.experts_without_tokens == 0, res.expert_tokens
    assert ranks[0]["layers"] == [[1, 2]]  # a Megatron model of 2 decoder layers
    # The Megatron model holds exactly the sliced checkpoint's tensors, byte for byte, from either source.
    ref = HFCheckpoint(sliced(hf, [0, 2], tmp_path / "sliced"))
    dtypes = {n: ref.read(n).dtype for n in ref.names()}
    for i in range(2):
        back = assemble_hf([p for r in ranks for p in r["sources"][i]["pieces"]], ref.config, None, dtypes)
        assert sorted(back) == sorted(ref.names())
        bad = [n for n in ref.names() if not same_bits(back[n], ref.read(n))]
        assert not bad, bad[:5]


def test_the_reference_is_transformers_on_the_sliced_checkpoint_and_not_the_whole_model(tiny, skip_one, tmp_path):
    import torch

    from megatron_hy.megatron.parity import random_tokens
    from megatron_hy.reference import reference_logits

    hf, _ = tiny
    results, ranks = skip_one
    ids = random_tokens(512, 2, 16, seed=0)  # the tokens of run_parity's defaults
    mine, mine_mtp = reference_logits(hf, ids, layers=[0, 2])
    theirs, theirs_mtp = reference_logits(sliced(hf, [0, 2], tmp_path / "sliced"), ids)  # from_pretrained
    assert torch.equal(mine, theirs) and len(mine_mtp) == len(theirs_mtp) == 1
    assert torch.equal(mine_mtp[0], theirs_mtp[0])
    megatron = next(r["sources"][0] for r in ranks if "logits" in r["sources"][0])
    assert compare(megatron["logits"], mine)[1] <= TOLERANCE
    whole, whole_mtp = reference_logits(hf, ids)
    assert compare(megatron["logits"], whole)[1] > 1000 * TOLERANCE  # layer 1 matters: the test is not vacuous
    assert compare(megatron["mtp"][0], whole_mtp[0])[1] > 1000 * TOLERANCE


def test_heads_wider_than_hidden_under_tp2_ep2_from_hf_and_torch_dist(wide):
    hf, mcore = wide
    results, ranks = run_parity(hf, [("hf", hf), ("mcore", mcore)], tp=2, ep=2, layers=[0, 2], tokens=32)
    assert len(ranks) == 4
    for res in results:
        assert res.passed and res.layout == "TP2 PP1 EP2 DP2" and res.layers == [0, 2], res
        assert res.mtp_max_rel_err <= TOLERANCE and res.experts_without_tokens == 0, res


def test_cli_bf16_json_with_progress_on_stderr(wide):
    hf, _ = wide
    proc = assert_ok(run_cli("verify", "parity", hf, "--device", "cpu", "--layers", "1-2", "--dtype", "bf16", "--json",
                             timeout=600))
    data = json.loads(proc.stdout)  # stdout is the one JSON object
    assert data["passed"] is True and data["tolerance"] is None, data
    assert (data["device"], data["dtype"], data["layers"], data["spec"]) == ("cpu", "bf16", [1, 2], "local")
    assert data["bounds"] == {"top1_agreement": BF16_MIN_TOP1, "mean_cosine": BF16_MIN_MEAN_COSINE}
    for key in ("top1_agreement", "mtp_top1_agreement"):
        assert data[key] >= BF16_MIN_TOP1, data
    for key in ("mean_cosine", "mtp_mean_cosine"):
        assert data[key] >= BF16_MIN_MEAN_COSINE, data
    progress = "\n".join(ln for ln in proc.stderr.splitlines() if ln.startswith("verify parity ["))
    for step in ("starting 1 process on cpu", "rank 0/1: building the model (2 decoder layers + 1 MTP, local spec, bf16",
                 f"rank 0/1: loading weights from HF {hf}: 2/3 layers", f"loading weights from HF {hf}: 3/3 layers",
                 "rank 0/1: Megatron forward", "transformers reference: reading 2 decoder layers + 1 MTP",
                 "transformers reference: forward"):
        assert step in progress, proc.stderr


def test_text_output(skip_one, capsys):
    from dataclasses import replace

    from megatron_hy.commands.verify import print_result
    from megatron_hy.megatron.parity import bounds

    res = skip_one[0][1]
    print_result(res, "torch_dist")
    out = capsys.readouterr().out
    assert out.startswith("parity TP1 PP1 EP1 on cpu, fp32, megatron-core local spec: Megatron (torch_dist weights) "
                          "vs transformers (fp32), 32 tokens\n  decoder layers 0,2 + MTP\n"), out
    assert out.endswith("  PASSED (tolerance 1e-05)\n"), out
    print_result(replace(res, dtype="bf16", tolerance=None, bounds=bounds("bf16"), passed=False), "HF")
    out = capsys.readouterr().out
    assert "on cpu, bf16, megatron-core local spec" in out
    assert out.endswith(f"  FAILED (top-1 >= {BF16_MIN_TOP1:g} and mean cosine >= {BF16_MIN_MEAN_COSINE:g} for logits "
                        "and each MTP depth; max rel and min cosine not judged in bf16)\n"), out


def corrupt(src: Path, out: Path, change) -> Path:
    shutil.copytree(src, out)
    ck = HFCheckpoint(src)
    for name, value in change(ck).items():
        rewrite(out, name, value.contiguous())
    return out


def test_bf16_passes_and_a_corrupted_weight_fails(tmp_path):
    """bf16 (Float16Module's cast) against the fp32 reference: the clean checkpoint passes the bounds; one
    layer's experts 0 and 1 with their down projections swapped, or one layer's attention output scaled by
    1.5, fails them (fp32 would fail them by far too)."""
    hf = write_tiny(tmp_path / "hf", TinySpec(layers=4), "inner", seed=1, tokenizer=False)
    down = "model.layers.2.mlp.experts.{}.down_proj.weight"
    swapped = corrupt(hf, tmp_path / "swapped", lambda ck: {down.format(0): ck.read(down.format(1)),
                                                           down.format(1): ck.read(down.format(0))})
    o_proj = "model.layers.1.self_attn.o_proj.weight"
    scaled = corrupt(hf, tmp_path / "scaled", lambda ck: {o_proj: ck.read(o_proj) * 1.5})
    results, ranks = run_parity(hf, [("hf", hf), ("hf", swapped), ("hf", scaled)], dtype="bf16", tokens=32)
    clean, *bad = results
    assert clean.passed and clean.dtype == "bf16" and clean.tolerance is None, clean
    assert clean.bounds == {"top1_agreement": BF16_MIN_TOP1, "mean_cosine": BF16_MIN_MEAN_COSINE}
    assert clean.top1_agreement >= BF16_MIN_TOP1 and clean.mean_cosine >= BF16_MIN_MEAN_COSINE, clean
    assert clean.mtp_top1_agreement >= BF16_MIN_TOP1 and clean.mtp_mean_cosine >= BF16_MIN_MEAN_COSINE, clean
    assert clean.max_rel_err > 100 * TOLERANCE  # it did run in bf16: far from fp32's agreement
    # every parameter in bf16, RMSNorm weights included; the router's expert bias kept in fp32
    assert ranks[0]["param_dtypes"] == ["torch.bfloat16"] and ranks[0]["expert_bias_dtypes"] == ["torch.float32"]
    for res in bad:
        assert not res.passed, res
        assert res.top1_agreement < BF16_MIN_TOP1 or res.mean_cosine < BF16_MIN_MEAN_COSINE, res


@pytest.mark.parametrize("flags, message", [
    (["--layers", "3"], "--layers 3: layer 3 does not exist; the checkpoint has 3 decoder layers, 0 to 2 "
                        "(its MTP layers come with every subset)"),
    (["--layers", "0,1,1"], "--layers 0,1,1: layer 1 is listed twice"),
    (["--layers", "2,1"], "--layers 2,1: expected increasing layer indices"),
    (["--layers", "0"], "--layers 0: every chosen layer is dense; choose a MoE layer too (the checkpoint's first is layer 1)"),
    (["--layers", "1", "--pp", "2"], "PP 2 must divide the number of decoder layers (1)"),
    (["--dtype", "bf16", "--tolerance", "1e-3"], "--tolerance bounds the fp32 relative error"),
    (["--layers", "1", "--adapter", "a", "--base", "b"], "--layers and --adapter cannot be combined"),
    (["--device", "cuda"], "--device cuda: torch"),
], ids=["out-of-range", "duplicate", "decreasing", "dense-only", "pp-too-large", "bf16-tolerance", "adapter",
        "no-gpu"])
def test_bad_input_is_one_error_line(tiny, capsys, flags, message):
    assert_one_error(hy3(capsys, "verify", "parity", tiny[0], "--device", "cpu", *flags), message)


@pytest.mark.parametrize("value, expected", [
    ("", "expected comma-separated layer indices or ranges such as 0,2,5-7, found ''"),
    ("0,,1", "expected comma-separated layer indices"),
    ("-1", "expected comma-separated layer indices"),
    ("3-1", "range 3-1 is empty"),
])
def test_layers_that_do_not_parse(tiny, capsys, value, expected):
    proc = hy3(capsys, "verify", "parity", tiny[0], "--layers", value)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("hy3: error:")]
    assert len(lines) == 1 and "argument --layers" in lines[0] and expected in lines[0], proc.stderr


def test_layer_lists_and_ranges():
    from megatron_hy.fields import index_list

    assert index_list("0,1,79") == [0, 1, 79] and index_list("0-3") == [0, 1, 2, 3]
    assert index_list(" 2 , 5-6") == [2, 5, 6]


# --- the CUDA path's setup, as far as a CPU can check it (no GPU here: nothing of it runs) -------------

def test_cuda_settings():
    """With transformer-engine: megatron-core's defaults (fused kernels) and training's experts (alltoall, grouped
    GEMM). Without it: the local spec unfused, as the CPU harness runs it (megatron-core's fused kernels are built
    by transformer-engine or apex; on the H200 the unfused local spec ran). Parameters on the GPU either way."""
    import torch

    from megatron_hy.megatron.device import model_settings
    from megatron_hy.megatron.harness import CPU_CONFIG, parallel_config
    from megatron_hy.megatron.model import make_transformer_config

    te = model_settings("cuda", "bf16", True)
    assert not set(te) & (set(CPU_CONFIG) - {"moe_token_dispatcher_type", "moe_grouped_gemm", "bf16", "fp16"})
    assert te["moe_token_dispatcher_type"] == "alltoall" and te["moe_grouped_gemm"] is True
    local = model_settings("cuda", "bf16", False)
    assert {k: v for k, v in local.items() if k in CPU_CONFIG and k not in ("bf16", "use_cpu_initialization")} == \
        {k: v for k, v in CPU_CONFIG.items() if k not in ("bf16", "use_cpu_initialization")}
    for kw in (te, local):
        assert kw["params_dtype"] == kw["pipeline_dtype"] == torch.bfloat16 and kw["bf16"] and not kw["fp16"]
        tconfig = make_transformer_config(TinySpec().config("bf16"), **kw, **parallel_config(2, 1, 2))
        assert not tconfig.use_cpu_initialization and not tconfig.gradient_accumulation_fusion  # params on the GPU
    cpu = model_settings("cpu", "fp32", False)
    assert cpu["use_cpu_initialization"] and cpu["moe_token_dispatcher_type"] == "allgather"
    assert cpu["params_dtype"] == torch.float32 and not cpu["bf16"]


def test_cuda_ranks_start_as_fresh_interpreters():
    from megatron_hy.megatron.device import spec_name, uses_te
    from megatron_hy.megatron.harness import _context

    assert _context("cuda").get_start_method() == "spawn"
    assert uses_te("cpu") is False and spec_name(False) == "local" and spec_name(True) == "transformer_engine"
