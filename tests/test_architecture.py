"""The house rules: no module imports from a floor above its own (docs/architecture.md), and README and
docs name only files that exist."""

from __future__ import annotations

import ast
import fnmatch
import re

from conftest import REPO

PKG = REPO / "megatron_hy"
DOCS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def floors() -> list[list[str]]:
    """The module patterns of each floor, from the table in docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    table = {int(cells[1]): re.findall(r"`([^`]+)`", cells[2]) for cells in rows}
    assert sorted(table) == list(range(len(table))), "floors must be numbered 0, 1, 2, ..."
    return [table[i] for i in range(len(table))]


def modules() -> dict[str, ast.Module]:
    """'convert/hf_to_mcore' -> its syntax tree, for every module of the package."""
    return {str(p.relative_to(PKG).with_suffix("")): ast.parse(p.read_text()) for p in PKG.rglob("*.py")}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules `name` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split("/")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "megatron_hy":
                mod = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import dcp` imports a module; `from .x import f` imports x
                sub = "/".join(mod + [alias.name])
                out.add(sub if sub in known else "/".join(mod))
        elif isinstance(node, ast.Import):
            out |= {"/".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == "megatron_hy"}
    return {m if m in known else f"{m}/__init__".lstrip("/") for m in out}


def floor_of(name: str, table: list[list[str]]) -> int:
    hits = [i for i, patterns in enumerate(table) if any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert len(hits) == 1, f"megatron_hy/{name}.py must be on exactly one floor of docs/architecture.md, is on {hits}"
    return hits[0]


def test_every_module_is_on_one_floor_and_imports_nothing_above_it():
    table, mods = floors(), modules()
    edges = 0
    for name, tree in sorted(mods.items()):
        deps = imports(name, tree, set(mods))
        if name.endswith("/__init__") and not deps:
            continue  # a package's docstring
        mine = floor_of(name, table)
        for dep in deps:
            assert dep in mods, f"megatron_hy/{name}.py imports {dep}, which does not exist"
            assert floor_of(dep, table) <= mine, (f"megatron_hy/{name}.py (floor {mine}) imports {dep} "
                                                  f"(floor {floor_of(dep, table)}), a floor above it")
            edges += 1
    assert edges > 150  # the imports were really found


def test_import_resolution():
    mods = modules()
    assert imports("convert/hf_to_mcore", mods["convert/hf_to_mcore"], set(mods)) >= {
        "__init__", "convert/dcp", "convert/torch_dist", "hf_checkpoint", "megatron/weights"}
    assert imports("hf_checkpoint", mods["hf_checkpoint"], set(mods)) == {"config", "errors", "mapping",
                                                                          "safetensors_io"}


# --- the docs name files that exist ------------------------------------------------------------

OURS = re.compile(r"(?<![\w./-])((?:megatron_hy|converters|recipes|launch|benchmarks|tests|docs|\.ci)/[\w./*-]*[\w*])")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
PLACEHOLDER = re.compile(r"/[A-Z][A-Z_]*\.\w+$")  # recipes/RECIPE.yaml


def test_docs_name_only_files_that_exist():
    missing = []
    for doc in DOCS:
        text = doc.read_text()
        for ref in OURS.findall(text):
            if not PLACEHOLDER.search(ref) and not list(REPO.glob(ref.rstrip("/"))):
                missing.append(f"{doc.name}: {ref}")
        for ref in LINK.findall(text):
            if not ref.startswith(("http://", "https://")) and not (doc.parent / ref).exists():
                missing.append(f"{doc.name}: link {ref}")
    assert not missing, missing


def test_every_converter_and_module_doc_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for doc in (REPO / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in readme, f"README does not link docs/{doc.name}"
    for script in (REPO / "converters").glob("*.py"):
        assert f"converters/{script.name}" in readme or script.name in readme, f"README does not mention {script.name}"
