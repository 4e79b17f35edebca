"""LoRA: adapters in ms-swift's Megatron formats and HF PEFT, merged into Hy3 and exported as PEFT.

The ms-swift-format adapters are made by ms-swift's and mcore-bridge's own code (the `swift_run`
fixture, tests/swift_jobs.py: mcore-bridge's LoRA tuner with nonzero factors, saved by ms-swift as
torch_dist and as safetensors under TP1, TP2 and EP2). Three independent computations must agree:
transformers on our merged checkpoint, transformers + PEFT on our exported adapter, and the Megatron
model on CPU with the adapter's delta applied in Megatron's own layout (under TP2 and EP2). For a PEFT
input adapter, our merge must equal peft's merge_and_unload.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import assert_ok, assert_one_error, load_tensors, run_cli, same_bits
from megatron_hy.lora.export import export_peft
from megatron_hy.lora.merge import merge_lora
from megatron_hy.megatron.parity import TOLERANCE, compare, run_parity
from megatron_hy.reference import load_hf_model

pytestmark = pytest.mark.megatron


@pytest.fixture(scope="module")
def base(lora_base):
    """fp32 weights (4 layers), so merged checkpoints carry the exact delta."""
    return lora_base


def swift_adapter(swift_run, layout: str, fmt: str, tmp_path=None, name: str = "adapter"):
    """An adapter ms-swift saved (fmt "dist": torch_dist, "safetensors"): under tp1 it targets all-linear,
    under tp2 / ep2 all-linear and the routers. With tmp_path, a copy that a test may edit."""
    src = swift_run.out(layout) / "lora" / fmt
    if tmp_path is None:
        return src
    shutil.copytree(src, tmp_path / name)
    return tmp_path / name


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))


def logits(path, tokens, peft_dir=None):
    model = load_hf_model(path)
    if peft_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft_dir)).eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.slow
@pytest.mark.parametrize("layout", [{"tp": 2}, {"ep": 2}], ids=["TP2", "EP2"])
def test_megatron_delta_matches_merged_checkpoint(base, swift_run, tmp_path, layout):
    """Every target kind (routers included), as ms-swift saved it under TP2."""
    adapter = swift_adapter(swift_run, "tp2", "dist")
    merged = tmp_path / "merged"
    merge_lora(base, adapter, merged, quiet=True)
    results, _ = run_parity(merged, [("hf+lora", (base, adapter))], reference=merged, **layout)
    res = results[0]
    assert res.passed and res.max_rel_err <= TOLERANCE and res.mtp_max_rel_err <= TOLERANCE, res


def test_exported_peft_matches_merged_and_peft_merge(base, swift_run, tokens, tmp_path):
    adapter = swift_adapter(swift_run, "tp1", "dist")
    merge_lora(base, adapter, tmp_path / "merged", quiet=True)
    proc = assert_ok(run_cli("lora", "export-peft", "--adapter", str(adapter), "--base", str(base),
                             str(tmp_path / "peft")))
    assert "model.layers.4.eh_proj.weight (MTP layer 4" in proc.stderr  # reported, not dropped silently
    report = json.loads((tmp_path / "peft" / "export_report.json").read_text())
    assert any("eh_proj" in s for s in report["not_exported"])
    conf = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert "model.layers.1.mlp.experts.gate_up_proj" in conf["target_parameters"]
    assert "model.layers.1.mlp.shared_experts.gate_proj" in conf["target_modules"]
    abs_err, rel = compare(logits(base, tokens, tmp_path / "peft"), logits(tmp_path / "merged", tokens))
    assert rel <= TOLERANCE, (abs_err, rel)
    assert compare(logits(base, tokens), logits(tmp_path / "merged", tokens))[1] > 1e-3  # the adapter does something
    assert_one_error(run_cli("lora", "export-peft", "--adapter", str(adapter), "--base", str(base),
                             str(tmp_path / "strict"), "--strict"), "no PEFT equivalent", "MTP layer")


@pytest.mark.parametrize("layout", ["tp2", "ep2"])
def test_swift_safetensors_adapter_equals_torch_dist_adapter(base, swift_run, tmp_path, layout):
    a, b = swift_adapter(swift_run, layout, "dist"), swift_adapter(swift_run, layout, "safetensors")
    merge_lora(base, a, tmp_path / "ma", quiet=True)
    assert_ok(run_cli("lora", "merge", "--base", str(base), "--adapter", str(b), str(tmp_path / "mb"), "--quiet"))
    ta, tb = load_tensors(tmp_path / "ma"), load_tensors(tmp_path / "mb")
    assert sorted(ta) == sorted(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_peft_input_adapter_matches_peft_merge_and_unload(base, tokens, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = load_hf_model(base)
    conf = LoraConfig(r=4, lora_alpha=16, use_rslora=True, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "o_proj", "shared_experts.up_proj", "model.layers.0.mlp.down_proj"],
                      target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    torch.manual_seed(0)
    peft_model = get_peft_model(model, conf)
    peft_model.save_pretrained(str(tmp_path / "plain"))
    expected = peft_model.merge_and_unload().state_dict()
    merge_lora(base, tmp_path / "plain", tmp_path / "merged", quiet=True)
    mine = load_hf_model(tmp_path / "merged").state_dict()
    assert sorted(mine) == sorted(expected)
    worst = max((mine[k] - expected[k]).abs().max().item() / max(expected[k].abs().max().item(), 1e-30) for k in mine)
    assert worst <= TOLERANCE
    # and our PEFT export of it loads back onto HYV3 with the same logits
    export_peft(tmp_path / "plain", base, tmp_path / "again", quiet=True)
    assert compare(logits(base, tokens, tmp_path / "again"), logits(tmp_path / "merged", tokens))[1] <= TOLERANCE


def test_rank_2r_export_when_gate_and_up_lora_a_differ(base, swift_run, tokens, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = swift_adapter(swift_run, "tp1", "safetensors", tmp_path)
    path = adapter / "adapter_model.safetensors"
    t = load_file(str(path))
    gen = torch.Generator().manual_seed(9)
    for k in t:
        if ".experts." in k and ".up_proj.lora_A" in k:
            t[k] = (torch.randn(t[k].shape, generator=gen) * 0.1).to(t[k].dtype)
    save_file(t, str(path))
    merge_lora(base, adapter, tmp_path / "merged", quiet=True)
    export_peft(adapter, base, tmp_path / "peft", quiet=True)
    conf = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert conf["rank_pattern"].get("model.layers.1.mlp.experts.gate_up_proj", conf["r"]) == 8  # 2r: gate and up stacked
    assert compare(logits(base, tokens, tmp_path / "peft"), logits(tmp_path / "merged", tokens))[1] <= TOLERANCE


@pytest.mark.parametrize("fmt", ["inner", "outer"])
def test_zero_adapter_merge_is_byte_identical(swift_run, tiny_inner, tiny_outer, tmp_path, fmt):
    """mcore-bridge's tuner starts lora_B at zero: that adapter, saved by ms-swift, changes no byte."""
    base = {"inner": tiny_inner, "outer": tiny_outer}[fmt]  # bf16, as published
    adapter = swift_run.out("tp1") / "zero-adapter"
    assert_ok(run_cli("lora", "merge", "--base", str(base), "--adapter", str(adapter), str(tmp_path / "m")))
    a, b = load_tensors(base), load_tensors(tmp_path / "m")
    assert sorted(a) == sorted(b) and all(same_bits(a[k], b[k]) for k in a)
    assert_ok(run_cli("check", str(tmp_path / "m")))


def test_outer_base_merges_into_outer_layout(base, swift_run, tmp_path):
    from megatron_hy.formats.hf_checkpoint import HFCheckpoint
    from megatron_hy.convert.layout import convert_layout

    outer = tmp_path / "outer"
    convert_layout(base, outer, "outer", quiet=True)
    adapter = swift_adapter(swift_run, "ep2", "dist")
    merge_lora(base, adapter, tmp_path / "mi", quiet=True)
    merge_lora(outer, adapter, tmp_path / "mo", quiet=True)
    mi, mo = HFCheckpoint(tmp_path / "mi"), HFCheckpoint(tmp_path / "mo")
    assert mo.layout == "outer"
    assert all(torch.equal(mi.read(n), mo.read(n)) for n in mi.names())


def test_megatron_adapter_ignores_use_rslora_as_training_did(base, swift_run, tmp_path):
    from megatron_hy.config import load_config
    from megatron_hy.formats.adapters import open_adapter

    adapter = swift_adapter(swift_run, "tp1", "dist", tmp_path)   # rank 4, alpha 8; trained as if with rsLoRA:
    args = json.loads((adapter / "args.json").read_text())
    (adapter / "args.json").write_text(json.dumps(dict(args, use_rslora=True)))
    a = open_adapter(adapter, load_config(base))
    assert a.scaling == 2.0 and any("ignore" in n for n in a.notes)
    assert open_adapter(adapter, load_config(base), rslora="on").scaling == 4.0


def test_bad_adapters_fail_clearly(base, swift_run, tmp_path):
    good = swift_adapter(swift_run, "tp1", "safetensors")
    out = str(tmp_path / "out")

    def variant(name, edit=None, conf=None):
        from safetensors.torch import load_file, save_file

        d = tmp_path / name
        shutil.copytree(good, d)
        if edit:
            t = load_file(str(d / "adapter_model.safetensors"))
            edit(t)
            save_file(t, str(d / "adapter_model.safetensors"))
        if conf:
            c = json.loads((d / "adapter_config.json").read_text())
            c.update(conf)
            (d / "adapter_config.json").write_text(json.dumps(c))
        return str(d)

    q = "base_model.model.model.layers.0.self_attn.q_proj"
    rank = variant("rank", conf={"r": 8})
    assert_one_error(run_cli("lora", "merge", "--base", str(base), "--adapter", rank, out), "rank mismatch", "r=8")
    q9 = q.replace("layers.0", "layers.9")
    missing = variant("missing", lambda t: t.update({q9 + ".lora_A.weight": t[q + ".lora_A.weight"].clone(),
                                                      q9 + ".lora_B.weight": t[q + ".lora_B.weight"].clone()}))
    assert_one_error(run_cli("lora", "merge", "--base", str(base), "--adapter", missing, out), "model.layers.9.self_attn.q_proj")
    other = variant("other", lambda t: t.update({q + ".lora_A.weight": torch.zeros(4, 32)}))
    assert_one_error(run_cli("lora", "merge", "--base", str(base), "--adapter", other, out), "another model")
    lacks = variant("lacks", lambda t: t.update({
        "base_model.model.model.layers.1.mlp.gate_proj.lora_A.weight": torch.zeros(4, 64),
        "base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight": torch.zeros(96, 4)}))
    assert_one_error(run_cli("lora", "merge", "--base", str(base), "--adapter", lacks, out),
                     "model.layers.1.mlp.gate_proj.weight", "target the base lacks")
    assert_one_error(run_cli("lora", "export-peft", "--adapter", str(tmp_path), "--base", str(base), out),
                     "not a LoRA adapter")
    assert not (tmp_path / "out").exists()


def test_tiny_adapter_writer_matches_swift_formats(base, swift_run, tmp_path):
    """`hy3 lora make-tiny` (the demo's adapters) writes the keys and shapes ms-swift writes, in both formats."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint import FileSystemReader

    from megatron_hy.lora.tiny import write_tiny_adapter

    kinds = ("attention", "dense", "shared", "experts", "mtp", "router")

    def dist(root):
        meta = FileSystemReader(str(root / "iter_0000001")).read_metadata().state_dict_metadata
        return {k: tuple(v.size) for k, v in meta.items() if hasattr(v, "size")}

    def st(root):
        return {k: tuple(v.shape) for k, v in load_file(str(root / "adapter_model.safetensors")).items()}

    mine = write_tiny_adapter(base, tmp_path / "mc", "mcore", kinds, saved_tp=2)
    assert dist(mine) == dist(swift_adapter(swift_run, "tp2", "dist"))
    mine = write_tiny_adapter(base, tmp_path / "sw", "swift-peft", kinds)
    assert st(mine) == st(swift_adapter(swift_run, "tp2", "safetensors"))
