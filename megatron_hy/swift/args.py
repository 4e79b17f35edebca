"""What `megatron sft` / `megatron export` accept, read from ms-swift's own source.

ms-swift parses its command line with transformers' `HfArgumentParser` over a dataclass
(`MegatronSftArguments`, `MegatronExportArguments`), so the dataclass fields are the flags.
Importing those modules pulls in mcore-bridge and transformer_engine, which a CPU machine does
not have, so the fields are read with `ast` from the installed source files, following the base
classes through their imports in Python's method resolution order (the most derived definition
of a field wins, as in `dataclasses.fields`).

`megatron_extra_kwargs` is a JSON dict that ms-swift hands to the model config, a subclass of
megatron-core's `TransformerConfig`; its keys are checked against that dataclass the same way.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import Hy3Error

COMMANDS = {
    "sft": ("swift", "megatron/arguments/sft_args.py", "MegatronSftArguments"),
    "export": ("swift", "megatron/arguments/export_args.py", "MegatronExportArguments"),
}
TRANSFORMER_CONFIG = ("megatron", "core/transformer/transformer_config.py", "TransformerConfig")


@dataclass(frozen=True)
class Field:
    name: str
    kinds: frozenset       # of "bool", "int", "float", "str", "dict", "any"
    choices: tuple | None  # Literal[...] values, when the type is a Literal
    is_list: bool
    owner: str             # class that defines it


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise Hy3Error(f"package {name!r} is not installed; it is needed to check `megatron` arguments "
                       f"(pip install -e . installs it)")
    return Path(list(spec.submodule_search_locations)[0])


# --- reading dataclasses from source -------------------------------------------------------------

@lru_cache(maxsize=None)
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _module_file(root: Path, package: str, dotted: str) -> Path:
    """File of module `dotted` (absolute, starting with the package name) under its package root."""
    parts = dotted.split(".")[1:]
    base = root.joinpath(*parts)
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return base / "__init__.py"


def _dotted(root: Path, package: str, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(root: Path, package: str, path: Path, name: str, depth: int = 0) -> tuple[Path, ast.ClassDef]:
    """Find class `name` as seen from module `path`, following `from X import name` re-exports."""
    if depth > 20:
        raise Hy3Error(f"cannot resolve {name} from {path}: import chain too long")
    tree = _parse(path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return path, node
    here = _dotted(root, package, path)
    is_pkg = path.name == "__init__.py"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) != name:
                    continue
                if node.level:
                    base = here.split(".")
                    base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                if not target.split(".")[0] == package:
                    raise Hy3Error(f"{path}: {name} comes from outside {package} ({target}); cannot read it")
                return _resolve(root, package, _module_file(root, package, target), alias.name, depth + 1)
    raise Hy3Error(f"{path}: class {name} not found")


def _c3(heads: list[list[str]]) -> list[str]:
    out: list[str] = []
    heads = [h[:] for h in heads if h]
    while heads:
        for h in heads:
            cand = h[0]
            if not any(cand in t[1:] for t in heads):
                break
        else:
            raise Hy3Error("inconsistent class hierarchy in ms-swift arguments")
        out.append(cand)
        heads = [[x for x in h if x != cand] for h in heads]
        heads = [h for h in heads if h]
    return out


def _kinds(ann: ast.expr | None) -> tuple[set, tuple | None, bool]:
    """(value kinds, Literal choices, is a list) for an annotation."""
    if ann is None:
        return {"any"}, None, False
    if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
        return {"any"}, None, False
    if isinstance(ann, ast.Name):
        return ({ann.id} if ann.id in ("bool", "int", "float", "str", "dict") else {"any"}), None, False
    if isinstance(ann, ast.Subscript):
        head = ann.value.id if isinstance(ann.value, ast.Name) else getattr(ann.value, "attr", "")
        inner = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if head == "Literal":
            choices = tuple(e.value for e in inner if isinstance(e, ast.Constant))
            return {"literal"}, choices, False
        if head in ("List", "list", "Tuple", "tuple"):
            k, c, _ = _kinds(inner[0])
            return k, c, True
        if head in ("Optional", "Union"):
            kinds, choices, is_list = set(), None, False
            for e in inner:
                if isinstance(e, ast.Constant) and e.value is None:
                    continue
                k, c, lst = _kinds(e)
                kinds |= k
                choices = c or choices
                is_list = is_list or lst
            return kinds, choices, is_list
        if head in ("Dict", "dict"):
            return {"dict"}, None, False
    return {"any"}, None, False


@lru_cache(maxsize=None)
def dataclass_fields(package: str, relpath: str, class_name: str) -> dict[str, Field]:
    root = package_dir(package)
    path = root / relpath
    if not path.exists():
        raise Hy3Error(f"{path}: not found; the installed {package} is not the version this was written for")
    classes: dict[str, tuple[Path, ast.ClassDef]] = {}

    def mro(p: Path, cls: ast.ClassDef) -> list[str]:
        key = f"{p}:{cls.name}"
        classes[key] = (p, cls)
        bases = []
        for b in cls.bases:
            bname = b.id if isinstance(b, ast.Name) else getattr(b, "attr", None)
            if bname in (None, "object", "Generic"):
                continue
            try:
                bp, bcls = _resolve(root, package, p, bname)
            except Hy3Error:
                continue  # a base from another library (e.g. transformers' TrainingArguments): no flags of ours
            bases.append(mro(bp, bcls))
        return [key] + _c3(bases + [[b[0] for b in bases]])

    start_path, start_cls = _resolve(root, package, path, class_name)
    order = mro(start_path, start_cls)
    fields: dict[str, Field] = {}
    for key in reversed(order):
        p, cls = classes[key]
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                ann = node.annotation
                if isinstance(ann, ast.Subscript) and getattr(ann.value, "id", "") == "ClassVar":
                    continue
                kinds, choices, is_list = _kinds(ann)
                fields[node.target.id] = Field(node.target.id, frozenset(kinds), choices, is_list, cls.name)
    return fields


def command_fields(command: str) -> dict[str, Field]:
    return dataclass_fields(*COMMANDS[command])


def transformer_config_fields() -> dict[str, Field]:
    return dataclass_fields(*TRANSFORMER_CONFIG)


# --- checking values -------------------------------------------------------------------------------

def _value_ok(f: Field, v) -> str | None:
    """None when `v` is a valid value for field `f`, else what was expected."""
    values = v if (f.is_list and isinstance(v, list)) else [v]
    if isinstance(v, list) and not f.is_list:
        return "a single value, not a list"
    for x in values:
        if isinstance(x, (dict, list)) and "dict" not in f.kinds and "any" not in f.kinds:
            return f"a scalar, got {type(x).__name__}"
        if "literal" in f.kinds:
            if x not in f.choices and str(x) not in [str(c) for c in f.choices]:
                return "one of " + ", ".join(repr(c) for c in f.choices if c is not None)
            continue
        if "any" in f.kinds or "str" in f.kinds:
            continue
        if "bool" in f.kinds and isinstance(x, bool):
            continue
        if "int" in f.kinds and isinstance(x, int) and not isinstance(x, bool):
            continue
        if "float" in f.kinds and isinstance(x, (int, float)) and not isinstance(x, bool):
            continue
        if "dict" in f.kinds and isinstance(x, dict):
            continue
        want = " or ".join(sorted(k for k in f.kinds))
        return f"{want}, got {x!r}"
    return None


def check_args(args: dict, command: str = "sft", where: str = "args", lines: dict | None = None) -> list[str]:
    """Problems with `args` as flags of `megatron COMMAND`; empty when every key and value is accepted."""
    fields = command_fields(command)
    lines = lines or {}
    problems = []
    for key, value in args.items():
        at = f"{where}.{key}" + (f" (line {lines[key]})" if key in lines else "")
        f = fields.get(key)
        if f is None:
            near = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            problems.append(f"{at}: `megatron {command}` has no argument {key!r}{hint}")
            continue
        if value is None:
            problems.append(f"{at}: null is not a value; remove the key to use ms-swift's default")
            continue
        bad = _value_ok(f, value)
        if bad:
            problems.append(f"{at}: expected {bad}")
        if key == "megatron_extra_kwargs" and isinstance(value, dict):
            tc = transformer_config_fields()
            for k, v in value.items():
                if k not in tc:
                    near = difflib.get_close_matches(k, tc, n=1)
                    hint = f"; did you mean {near[0]!r}?" if near else ""
                    problems.append(f"{at}: {k!r} is not a megatron-core TransformerConfig field{hint}")
                elif v is not None and (bad := _value_ok(tc[k], v)):
                    problems.append(f"{at}.{k}: expected {bad}")
    return problems
