"""The real megatron-core GPTModel on CPU (gloo processes) against transformers' HYV3ForCausalLM.

Each layout runs once and checks, for the inner and the outer copy of the same checkpoint:
logits and MTP logits within 1e-5 relative error, and HF -> Megatron -> HF byte-exact for every tensor.
The mapping table's tensor-parallel axes are checked against Megatron's own sharding on every run, and
every routed expert of every MoE layer must have received tokens from megatron-core's router.
"""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_error, run_cli, same_bits
from megatron_helpers import assemble_hf
from megatron_hy.dtypes import torch_dtype
from megatron_hy.formats.hf_checkpoint import HFCheckpoint
from megatron_hy.megatron.config import padded_vocab_size
from megatron_hy.megatron.parity import TOLERANCE, judge, make_layout, run_parity
from megatron_hy.tiny import TinySpec, write_tiny

pytestmark = [pytest.mark.slow, pytest.mark.megatron]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One tiny Hy3 (4 layers, 1 dense, 8 experts, 1 MTP layer, bf16) in both layouts."""
    root = tmp_path_factory.mktemp("parity")
    spec = TinySpec(layers=4)
    return write_tiny(root / "inner", spec, "inner", seed=3), write_tiny(root / "outer", spec, "outer", seed=3)


@pytest.fixture(scope="module")
def mcore(pair, tmp_path_factory):
    """The same model as a torch_dist checkpoint written offline by `hy3 convert hf-to-mcore`."""
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore

    out = tmp_path_factory.mktemp("mcore") / "ckpt"
    hf_to_mcore(pair[1], out, quiet=True)
    return out


def check(results, ranks, sources, layout):
    lay = make_layout(**layout)
    for res in results:
        assert res.passed, res
        assert res.max_rel_err <= TOLERANCE and res.mtp_max_rel_err <= TOLERANCE, res
        assert len(res.mtp_max_abs_err) == 1
    cfg = HFCheckpoint(sources[0]).config
    for res in results:  # every expert of every MoE layer (the MTP layer's too) was exercised by the compared tokens
        assert len(res.expert_tokens) == cfg.layer_types.count("sparse") + cfg.num_mtp_layers, res.expert_tokens
        assert all(len(c) == cfg.num_experts for c in res.expert_tokens.values())
        assert res.experts_without_tokens == 0, res.expert_tokens
    assert all(len(r["layers"]) == lay.chunks for r in ranks)  # one model chunk per virtual stage
    assert sorted({n for r in ranks for c in r["layers"] for n in c}) == list(range(1, cfg.num_layers + 1))
    for i, src in enumerate(sources):
        hf = HFCheckpoint(src)
        cfg = hf.config
        pieces = [p for r in ranks for p in r["sources"][i]["pieces"]]
        dtypes = {n: torch_dtype(hf.dtype(n)) for n in hf.names()}
        back = assemble_hf(pieces, cfg, padded_vocab_size(cfg.vocab_size, layout.get("tp", 1)), dtypes)
        assert sorted(back) == sorted(hf.names())
        bad = [n for n in hf.names() if not same_bits(back[n], hf.read(n))]
        assert not bad, f"not byte-exact after HF -> Megatron -> HF: {bad[:5]}"


LAYOUTS = {"TP1": {}, "TP2": {"tp": 2}, "EP2": {"ep": 2}, "PP2": {"pp": 2}, "TP2+EP2": {"tp": 2, "ep": 2},
           # the recipes' expert layout: experts not split by TP (ETP 1) while attention and dense MLPs are
           "TP2+EP2 ETP1": {"tp": 2, "ep": 2, "etp": 1},
           "PP2 VPP2": {"pp": 2, "vpp": 2}}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_parity_and_round_trip(pair, mcore, name):
    """HF inner, HF outer and our torch_dist checkpoint (through megatron-core's dist_checkpointing.load),
    each loaded into the same Megatron model under the layout."""
    inner, outer = pair
    layout = LAYOUTS[name]
    results, ranks = run_parity(inner, [("hf", inner), ("hf", outer), ("mcore", mcore)], export=True, **layout)
    assert len(ranks) == make_layout(**layout).world
    assert [r.source for r in results] == ["hf", "hf", "mcore"]
    check(results, ranks, [inner, outer, inner], layout)
    if "vpp" in layout:  # megatron-core interleaves the chunks: rank 0 holds layers 1 and 3, rank 1 layers 2 and 4
        assert [r["layers"] for r in ranks] == [[[1], [3]], [[2], [4]]]


def test_tp2_pp2_ep2_etp1_from_hf_and_torch_dist(megatron_world4, lora_base):
    """The recipes' expert layout with pipeline stages, in 4 processes (conftest.megatron_world4)."""
    w = megatron_world4
    results = judge(w.job, w.parity, lora_base)
    assert [r.layout for r in results] == ["TP2 PP2 EP2 ETP1"] * 2 and [r.source for r in results] == ["hf", "mcore"]
    check(results, w.parity, [lora_base, lora_base], {"tp": 2, "pp": 2, "ep": 2, "etp": 1})


def test_one_kv_head_two_dense_layers_under_pp2_ep2(tmp_path):
    ck = write_tiny(tmp_path / "kv1", TinySpec(layers=4, dense_layers=2, kv_heads=1), seed=5)
    layout = {"pp": 2, "ep": 2}
    results, ranks = run_parity(ck, [("hf", ck)], export=True, **layout)
    assert len(ranks) == 4
    check(results, ranks, [ck], layout)


def test_vocab_padding_top3_and_six_experts_per_ep_rank(tmp_path):
    # vocab 301 is not a multiple of TP 2: Megatron's embedding and output layer hold 302 rows
    ck = write_tiny(tmp_path / "v301", TinySpec(vocab=301, experts=12, top_k=3), seed=7, tokenizer=False)
    layout = {"tp": 2, "ep": 2}
    results, ranks = run_parity(ck, [("hf", ck)], export=True, **layout)
    check(results, ranks, [ck], layout)


@pytest.mark.parametrize("name", ["TP2+EP2 ETP1", "PP2 VPP2"])
def test_heads_times_head_dim_unlike_hidden(wide_heads, name):
    """As in the real Hy3 (64 heads x 128 = 8192 vs hidden 4096): 4 query heads of 24 (96) over hidden 64, 2 dense
    layers of 4, 6 experts top-3; from HF and from our torch_dist."""
    ck, mcore = wide_heads
    layout = LAYOUTS[name]
    results, ranks = run_parity(ck, [("hf", ck), ("mcore", mcore)], export=True, tokens=24, **layout)
    check(results, ranks, [ck, ck], layout)


@pytest.fixture(scope="module")
def wide_heads(tmp_path_factory):
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore

    root = tmp_path_factory.mktemp("wide-heads")
    spec = TinySpec(layers=4, dense_layers=2, heads=4, kv_heads=2, head_dim=24, experts=6, top_k=3)
    ck = write_tiny(root / "hf", spec, seed=13, tokenizer=False)
    assert spec.heads * spec.head_dim != spec.hidden
    hf_to_mcore(ck, root / "mcore", quiet=True)
    return ck, root / "mcore"


def test_verify_parity_cli_json(pair):
    proc = run_cli("verify", "parity", str(pair[1]), "--device", "cpu", "--tp", "2", "--pp", "2", "--vpp", "2", "--json",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["passed"] is True and data["layout"] == "TP2 PP2 VPP2 EP1"
    assert (data["device"], data["dtype"], data["spec"], data["layers"]) == ("cpu", "fp32", "local", [0, 1, 2, 3])
    for key in ("max_abs_err", "max_rel_err", "mtp_max_rel_err"):
        assert data[key] <= TOLERANCE
    assert data["experts_without_tokens"] == 0 and sorted(data["expert_tokens"]) == ["2", "3", "4", "5"]


def test_uncovered_checkpoint_tensor_fails_naming_it(pair, tmp_path):
    import shutil

    from megatron_hy.formats.safetensors_io import INDEX_NAME

    bad = tmp_path / "extra"
    shutil.copytree(pair[0], bad)
    from safetensors.torch import save_file
    import torch

    save_file({"model.layers.1.mlp.gate_bias": torch.zeros(8)}, str(bad / "extra.safetensors"))
    idx = json.loads((bad / INDEX_NAME).read_text())
    idx["weight_map"]["model.layers.1.mlp.gate_bias"] = "extra.safetensors"
    (bad / INDEX_NAME).write_text(json.dumps(idx))
    assert_one_error(run_cli("verify", "parity", str(bad)), "model.layers.1.mlp.gate_bias")


def test_top1_checkpoint_is_refused(tmp_path):
    ck = write_tiny(tmp_path / "top1", TinySpec(top_k=1), seed=1)
    assert_one_error(run_cli("verify", "parity", str(ck)), "num_experts_per_tok is 1")


@pytest.mark.parametrize("flags, message", [
    (["--tp", "3"], "TP 3 must divide"),
    (["--vpp", "2"], "--vpp 2 needs pipeline parallelism: --pp must be at least 2, got 1"),
    (["--pp", "2", "--vpp", "4"], "PP 2 x VPP 4 = 8 must divide the number of decoder layers (4)"),
], ids=["tp3", "vpp-without-pp", "vpp-too-many-stages"])
def test_layout_that_does_not_fit_is_refused(pair, flags, message):
    assert_one_error(run_cli("verify", "parity", str(pair[0]), *flags), message)
