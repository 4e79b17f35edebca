"""The mapping table is the one place tensor names are spelled (docs/architecture.md, "One table").

A tensor-name literal is a string constant of the package (docstrings aside) with no whitespace that
contains a dotted name with a part of some name in the table (`self_attn.q_proj.weight`, `.mlp.experts.`,
`mtp.layers.`), or that is whole a LoRA module name of the table (`linear_qkv`). Megatron's recompute
option values (`layernorm`, `shared_experts`) and config field names are other vocabularies, not counted.
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace

import pytest
from conftest import REPO, load_tensors, read_index, same_bits

from megatron_hy import mapping

PKG = REPO / "megatron_hy"
TABLE = {"mapping.py", "transforms.py"}
# generic parts that name no tensor by themselves
GENERIC = {"weight", "{e}", "{i}", "{k}", ""}
FILE = re.compile(r"\.(json|jsonl|safetensors|py|pt|yaml|yml|txt|md|bin|sh|partial|model)$")

# module -> why its literals stay (at most 10 literals, in at most 2 modules)
ALLOWED: dict[str, str] = {}


def table_parts() -> set[str]:
    names = [n for t in mapping.HF_TENSORS for n in (t.inner, t.outer) if n]
    names += [r.mcore for r in mapping.MCORE_ROWS] + [n for r in mapping.MCORE_ROWS for n in r.hf]
    names += [mapping.LAYER, mapping.MCORE_LAYER, mapping.MCORE_MTP, mapping.MCORE_MTP_LAYER]
    return {p for n in names for p in n.split(".")} - GENERIC


def lora_modules() -> set[str]:
    return {t.lora for t in mapping.HF_TENSORS if t.lora}


def is_tensor_name(text: str, parts: set[str], modules: set[str]) -> bool:
    if re.search(r"\s", text) or not text:
        return False
    if text in modules:
        return True
    return "." in text and not FILE.search(text) and any(p in parts for p in text.split("."))


def literals_outside_table() -> dict[str, list[str]]:
    parts, modules = table_parts(), lora_modules()
    found: dict[str, list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(PKG))
        if rel in TABLE:
            continue
        tree = ast.parse(path.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and is_tensor_name(node.value, parts, modules)):
                found.setdefault(rel, []).append(node.value)
    return found


def test_the_rule_sees_names():
    parts, modules = table_parts(), lora_modules()
    for name in ("model.layers.", ".mlp.experts.", "self_attn.q_proj.weight", "mtp.layers.", "linear_qkv",
                 "mlp.e_score_correction_bias", "decoder.final_layernorm.weight"):
        assert is_tensor_name(name, parts, modules), name
    for other in ("layernorm", "shared_experts", "moe_router_topk", "config.json", "a b.weight", "hy3.yaml", "model.safetensors.index.json"):
        assert not is_tensor_name(other, parts, modules), other


def test_tensor_names_are_spelled_only_in_the_table():
    found = literals_outside_table()
    unexplained = {m: v for m, v in found.items() if m not in ALLOWED}
    assert not unexplained, unexplained
    assert sum(len(v) for v in found.values()) <= 10 and len(found) <= 2, found


# --- a variant from the table alone -------------------------------------------------------------------
#
# A release that spells the fused layout otherwise: the router, its expert bias, the shared expert's module and
# the fused expert tensors renamed. Only mapping.HF_TENSORS changes; the generator, checker, layout detection and
# both converters read it. The inner names stay transformers' (the generator builds through HYV3ForCausalLM).
VARIANT_OUTER = {
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.e_score_correction_bias": "mlp.router.e_score_correction_bias",
    "mlp.experts.gate_up_proj": "mlp.experts.w13",
    "mlp.experts.down_proj": "mlp.experts.w2",
}


def variant_table() -> tuple:
    def outer(name: str | None) -> str | None:
        if name is None:
            return None
        name = VARIANT_OUTER.get(name, name)
        return name.replace("mlp.shared_experts.", "mlp.shared_expert.")

    return tuple(replace(t, outer=outer(t.outer)) for t in mapping.HF_TENSORS)


@pytest.mark.megatron
def test_a_variant_is_a_new_table_alone(tmp_path, monkeypatch, tiny_inner):
    from megatron_hy.check import check_checkpoint
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore
    from megatron_hy.convert.layout import convert_layout
    from megatron_hy.convert.mcore_to_hf import mcore_to_hf
    from megatron_hy.tiny import TinySpec, write_tiny

    monkeypatch.setattr(mapping, "HF_TENSORS", variant_table())
    variant = write_tiny(tmp_path / "variant", TinySpec(), fmt="outer", seed=0, tokenizer=False)
    keys = set(read_index(variant)["weight_map"])
    renamed = [k for k in keys if any(k.endswith("." + v) for v in VARIANT_OUTER.values()) or ".shared_expert." in k]
    assert renamed and not any(k.endswith("." + old) or ".shared_experts." in k for k in keys for old in VARIANT_OUTER)

    rep = check_checkpoint(variant)
    assert rep.ok and rep.layout == "outer", rep.errors
    assert mapping.detect_layout(read_index(tiny_inner)["weight_map"]) == "inner"

    # The same model in the inner spelling (the generator draws the expert bias by its transformers name, which
    # the variant renames, so this model is not tiny_inner's), then through Megatron and back to both.
    inner = write_tiny(tmp_path / "variant-inner", TinySpec(), fmt="inner", seed=0, tokenizer=False)
    assert set(read_index(inner)["weight_map"]) == set(read_index(tiny_inner)["weight_map"])
    hf_to_mcore(variant, tmp_path / "mcore", quiet=True)
    mcore_to_hf(tmp_path / "mcore", tmp_path / "back", variant, fmt="outer", quiet=True)
    assert_same_tensors(variant, tmp_path / "back")
    mcore_to_hf(tmp_path / "mcore", tmp_path / "inner", variant, fmt="inner", quiet=True)
    assert_same_tensors(inner, tmp_path / "inner")
    convert_layout(variant, tmp_path / "relaid", "inner", quiet=True)
    assert_same_tensors(inner, tmp_path / "relaid")


def assert_same_tensors(a, b) -> None:
    ta, tb = load_tensors(a), load_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and same_bits(ta[k], tb[k]), k
