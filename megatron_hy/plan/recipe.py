"""Recipes: YAML files that say which cluster a `megatron sft` run is for and with which arguments.

    cluster:              # what the run is planned for; never passed to megatron
      nodes: 2
      gpus_per_node: 8
      gpu_memory_gb: 80   # per GPU, as sold (80 for H100/H800/A100-80G, 96 for H20, 141 for H200)
      gpu: H100           # free text, for people
      host_memory_gb: 2048  # optional: host RAM per node, in GiB as `free -g` reports it
    env:                  # optional extra environment for every node
      PYTORCH_CUDA_ALLOC_CONF: expandable_segments:True
    args:                 # `megatron sft` arguments, exactly as ms-swift names them
      tuner_type: lora
      ...

The leading comment block is the recipe's description (`hy3 plan` prints its first line).

The recipes of the repository's `recipes/` ship inside the package (`megatron_hy/recipes` links to it;
the wheel holds the files): wherever a command takes a recipe, a bundled recipe's name will do, from any
directory (`hy3 plan --list` lists them).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from ..errors import Hy3Error

CLUSTER_KEYS = {"nodes": int, "gpus_per_node": int, "gpu_memory_gb": (int, float), "gpu": str,
                "host_memory_gb": (int, float)}
OPTIONAL_CLUSTER_KEYS = {"gpu", "host_memory_gb"}
TOP_KEYS = {"cluster", "env", "args"}
BUNDLED = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class Cluster:
    nodes: int
    gpus_per_node: int
    gpu_memory_gb: float
    gpu: str = ""
    host_memory_gb: float | None = None

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass
class Recipe:
    path: str
    cluster: Cluster
    args: dict
    env: dict = field(default_factory=dict)
    description: str = ""
    lines: dict = field(default_factory=dict)   # args key -> line number in the file

    @property
    def name(self) -> str:
        return Path(self.path).stem


def _key_lines(text: str) -> dict:
    """Line numbers (1-based) of the keys under `args:`."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    out = {}
    if isinstance(root, yaml.MappingNode):
        for k, v in root.value:
            if k.value == "args" and isinstance(v, yaml.MappingNode):
                for kk, _ in v.value:
                    out[kk.value] = kk.start_mark.line + 1
    return out


def _description(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines).strip()


def bundled_recipes() -> list[Path]:
    return sorted(BUNDLED.glob("*.yaml"))


def find_recipe(path: str | Path) -> Path:
    """A recipe file: the path itself, else the bundled recipe it names (`lora-80g-1n-4k`, with or without
    .yaml, or `recipes/lora-80g-1n-4k.yaml` as the README writes it, from any directory)."""
    p = Path(path)
    if p.is_file():
        return p
    parts = p.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "recipes"):
        name = p.name if p.suffix == ".yaml" else p.name + ".yaml"
        if (BUNDLED / name).is_file():
            return BUNDLED / name
    if p.exists():
        raise Hy3Error(f"{p}: not a recipe file")
    names = ", ".join(r.stem for r in bundled_recipes())
    raise Hy3Error(f"{p}: recipe not found: no such file and no bundled recipe of that name "
                   f"(`hy3 plan --list`: {names})")


def load_recipe(path: str | Path) -> Recipe:
    p = find_recipe(path)
    text = p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise Hy3Error(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise Hy3Error(f"{p}: expected a mapping with sections {sorted(TOP_KEYS)}")
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise Hy3Error(f"{p}: unknown top-level section(s) {sorted(unknown)}; expected {sorted(TOP_KEYS)} "
                       f"(megatron arguments go under `args:`)")
    for need in ("cluster", "args"):
        if not isinstance(data.get(need), dict):
            raise Hy3Error(f"{p}: missing section `{need}:` (a mapping)")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise Hy3Error(f"{p}: `env:` must map variable names to values")
    return Recipe(path=str(p), cluster=parse_cluster(data["cluster"], f"{p}: cluster"),
                  args=dict(data["args"]), env={str(k): str(v) for k, v in env.items()},
                  description=_description(text), lines=_key_lines(text))


def parse_cluster(d: dict, where: str) -> Cluster:
    unknown = set(d) - set(CLUSTER_KEYS)
    if unknown:
        raise Hy3Error(f"{where}: unknown key(s) {sorted(unknown)}; expected {sorted(CLUSTER_KEYS)}")
    for k, t in CLUSTER_KEYS.items():
        v = d.get(k)
        if k == "gpu" or v is None and k in OPTIONAL_CLUSTER_KEYS:
            continue
        if v is None:
            raise Hy3Error(f"{where}: missing {k!r}")
        if isinstance(v, bool) or not isinstance(v, t) or v <= 0:
            raise Hy3Error(f"{where}.{k}: expected a positive number, got {v!r}")
    host = d.get("host_memory_gb")
    return Cluster(int(d["nodes"]), int(d["gpus_per_node"]), float(d["gpu_memory_gb"]), str(d.get("gpu", "")),
                   None if host is None else float(host))


def parse_override(item: str) -> tuple[str, object]:
    """`key=value` -> (key, YAML-parsed value): `lora_rank=16`, `recompute_modules=[core_attn, moe]`."""
    if "=" not in item:
        raise Hy3Error(f"--set {item!r}: expected KEY=VALUE, e.g. --set max_length=8192")
    key, raw = item.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    if not key:
        raise Hy3Error(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def with_overrides(recipe: Recipe, sets: list[str] = (), nodes: int | None = None, gpus_per_node: int | None = None,
                   gpu_memory_gb: float | None = None, host_memory_gb: float | None = None) -> Recipe:
    """A copy of the recipe with argument overrides (`--set`) and cluster overrides applied."""
    args = copy.deepcopy(recipe.args)
    for item in sets or ():
        key, value = parse_override(item)
        args[key] = value
    cluster = recipe.cluster
    flags = {"nodes": "--nodes", "gpus_per_node": "--gpus-per-node", "gpu_memory_gb": "--gpu-mem",
             "host_memory_gb": "--host-mem"}
    for name, v in (("nodes", nodes), ("gpus_per_node", gpus_per_node), ("gpu_memory_gb", gpu_memory_gb),
                    ("host_memory_gb", host_memory_gb)):
        if v is not None:
            if v <= 0:
                raise Hy3Error(f"{flags[name]}: expected a positive number, got {v}")
            cluster = replace(cluster, **{name: int(v) if name in ("nodes", "gpus_per_node") else float(v)})
    return replace(recipe, args=args, cluster=cluster)


def to_cli(args: dict) -> list[str]:
    """Flags as ms-swift's own YAML loader would write them: `--key value`, lists as several values,
    dicts as JSON, booleans as true/false."""
    out = []
    for k, v in args.items():
        out.append(f"--{k}")
        if isinstance(v, list):
            out += [_scalar(x) for x in v]
        elif isinstance(v, dict):
            out.append(json.dumps(v, separators=(",", ":")))
        else:
            out.append(_scalar(v))
    return out


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
