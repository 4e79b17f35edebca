"""The house rules (docs/architecture.md): no module imports from a floor above its own, no two folders import
each other (directly or around a loop), the package's own modules are imported inside a function only where
that keeps a heavy dependency lazy, and README and docs name only files that exist."""

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


# Third-party packages slow to import (seconds, or hundreds of ms): `hy3 --help` and the data commands must
# not pay for them. A module of ours may be imported inside a function only when importing it at the top
# would import one of these that the importing module does not import already.
HEAVY = {"torch", "transformers", "megatron", "mcore_bridge", "swift", "matplotlib", "numpy", "tokenizers",
         "peft", "modelscope", "safetensors", "datasets", "transformer_engine"}


def _outside_imports(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The top-level names of what an import statement brings in from outside the package."""
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names} - {"megatron_hy"}
    if node.level or not node.module or node.module.split(".")[0] == "megatron_hy":
        return set()
    return {node.module.split(".")[0]}


def _module_level(tree: ast.Module) -> list[ast.stmt]:
    """Import statements run when the module is imported (under if/try too; not in functions)."""
    out, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        for attr in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(getattr(node, attr, None) or [])
    return out


def _heavy_closure(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """module -> the heavy packages importing it imports (through our modules imported at module level)."""
    known = set(mods)
    direct, eager = {}, {}
    for name, tree in mods.items():
        direct[name], eager[name] = set(), set()
        for node in _module_level(tree):
            direct[name] |= _outside_imports(node) & HEAVY
            eager[name] |= imports(name, ast.Module(body=[node], type_ignores=[]), known)

    def closure(name: str, seen: set[str]) -> set[str]:
        if name in seen:
            return set()
        seen.add(name)
        out = set(direct.get(name, ()))
        for dep in eager.get(name, ()):
            out |= closure(dep, seen)
        return out

    return {name: closure(name, set()) for name in mods}


def test_imports_inside_functions_only_keep_heavy_dependencies_lazy():
    mods = modules()
    heavy = _heavy_closure(mods)
    needless = []
    for name, tree in sorted(mods.items()):
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    for top in _outside_imports(node) - HEAVY:
                        needless.append(f"megatron_hy/{name}.py:{node.lineno} imports {top} in a function")
                    for dep in imports(name, ast.Module(body=[node], type_ignores=[]), set(mods)):
                        if not heavy[dep] - heavy[name]:
                            needless.append(f"megatron_hy/{name}.py:{node.lineno} imports {dep} in a function")
    assert not needless, needless


def folder(name: str) -> str:
    """A module's folder, or the module itself for one at the top of the package."""
    return name.split("/")[0] if "/" in name else name


def test_no_import_cycle_between_folders():
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, tree in mods.items():
        for dep in imports(name, tree, set(mods)):
            if folder(dep) != folder(name) and dep != "__init__":
                graph.setdefault(folder(name), set()).add(folder(dep))
    assert len(graph) > 10 and sum(map(len, graph.values())) > 40  # the imports were really found

    assert not folder_cycles(graph), folder_cycles(graph)


def folder_cycles(graph: dict[str, set[str]]) -> list[str]:
    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    return sorted(f"{a} -> {b} -> ... -> {a}" for a, deps in graph.items() for b in deps if reaches(b, a))


def test_a_cycle_is_seen():
    assert folder_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        "a -> b -> ... -> a", "b -> c -> ... -> b", "c -> a -> ... -> c"]
    assert folder_cycles({"a": {"b"}, "b": {"c"}, "d": {"a"}}) == []


def test_import_resolution():
    mods = modules()
    assert imports("convert/hf_to_mcore", mods["convert/hf_to_mcore"], set(mods)) >= {
        "__init__", "formats/dcp", "formats/torch_dist", "formats/hf_checkpoint", "megatron/weights"}
    assert imports("formats/hf_checkpoint", mods["formats/hf_checkpoint"], set(mods)) == {
        "config", "dtypes", "errors", "mapping", "formats/safetensors_io"}


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
