"""Build the exact `megatron sft` / `megatron export` command and environment for every node.

ms-swift's `megatron` entry point re-launches itself under `torch.distributed.run` when NPROC_PER_NODE
or NNODES is set, turning NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT into the
matching torchrun flags (swift/cli/main.py). So a node's command is those variables plus
`megatron sft --flag value ...`; every node runs the same command with its own NODE_RANK.

Where the node list comes from:
  single  one node: NPROC_PER_NODE only
  ip-list IP_LIST="ip1,ip2,..." as in Tencent's Hy3 guide; the first address is the master, this node's
          rank is the position of its own address (LOCAL_IP, or found on the machine) in the list.
          No SSH: run the same command on every node.
  env     NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) already set, e.g. by a job scheduler
  slurm   SLURM_JOB_NODELIST, SLURM_NODEID, SLURM_NNODES: run one task per node with srun

`prepare_launch` makes the checks, the plan and every node's command, the same for `--dry-run` and a real run;
`start_node` runs this node's share (commands/launch.py prints or starts them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Hy3Config, load_config
from .errors import Hy3Error
from .fields import env_int, integer
from .formats.safetensors_io import INDEX_NAME, read_header
from .launch_data import DataPlan, encode_all, plan_data, template_for, wait_for
from .mapping import detect_layout
from .outputs import check_not_an_input, written_kind
from .plan.planner import plan_recipe
from .plan.recipe import Recipe, to_cli
from .plan.report import format_plan
from .swift.args import check_args, command_fields
from .swift.recipe import with_plugin

# NCCL and CUDA settings every node gets: the one place they are set. Cluster-specific network knobs
# (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, NCCL_IB_GID_INDEX, ...) belong in the recipe's `env:` section or
# the shell; anything already in the environment is inherited by the launched processes.
NCCL_ENV = {
    # Megatron relies on kernels being queued in issue order so tensor/sequence-parallel communication
    # overlaps compute as planned (ms-swift sets the same default).
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    # MoE dispatch buffers change size every step; expandable segments keep fragmentation down.
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    # NCCL warnings and errors only; set NCCL_DEBUG=INFO in the recipe env to debug topology.
    "NCCL_DEBUG": "WARN",
}
DEFAULT_PORT = 29500
MODES = ("auto", "single", "ip-list", "env", "slurm")


@dataclass
class NodeCommand:
    rank: int
    host: str
    env: dict
    argv: list

    def shell(self) -> str:
        """Copy-pasteable shell: environment, then the command with one flag per line."""
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in self.env.items())
        groups: list[list[str]] = []
        for a in self.argv[2:]:
            if a.startswith("--") or not groups:
                groups.append([a])
            else:
                groups[-1].append(a)
        lines = [" ".join(shlex.quote(a) for a in self.argv[:2])]
        lines += ["  " + " ".join(shlex.quote(a) for a in g) for g in groups]
        return " \\\n".join(([env] if env else []) + lines)


def expand_hostlist(text: str) -> list[str]:
    """Slurm host list -> host names: "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1."""
    hosts, depth, item = [], 0, ""
    for ch in text.strip() + ",":
        if ch == "," and depth == 0:
            if item:
                hosts += _expand_one(item)
            item = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        item += ch
    return hosts


def _expand_one(item: str) -> list[str]:
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", item)
    if not m:
        return [item]
    prefix, ranges, rest = m.groups()
    out = []
    for r in ranges.split(","):
        if "-" in r:
            lo, hi = r.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()):
                raise Hy3Error(f"SLURM_JOB_NODELIST: cannot read range {r!r} in {item!r}")
            out += [f"{prefix}{str(n).zfill(len(lo))}" for n in range(int(lo), int(hi) + 1)]
        else:
            out.append(prefix + r)
    return [h + tail for h in out for tail in _expand_one(rest)] if rest else out


def local_addresses() -> set[str]:
    """IPv4 addresses of this machine (hostname resolution and `hostname -I`)."""
    addrs = {"127.0.0.1"}
    try:
        addrs |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        pass
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
        addrs |= set(out.split())
    except (OSError, subprocess.SubprocessError):
        pass
    return addrs


@dataclass
class Cluster:
    hosts: list          # host of each node rank
    master: str
    port: int
    this_rank: int | None  # None when this machine is not (known to be) one of the nodes


def resolve_cluster(mode: str, nodes: int, environ: dict, ip_list: str | None = None, port: int | None = None,
                    local: set[str] | None = None) -> Cluster:
    """Which hosts take part, who is master, which rank this machine is."""
    if mode == "auto":
        if ip_list or environ.get("IP_LIST"):
            mode = "ip-list"
        elif environ.get("SLURM_JOB_NODELIST") and environ.get("SLURM_NODEID") is not None:
            mode = "slurm"
        elif nodes == 1:
            mode = "single"
        elif environ.get("MASTER_ADDR") and environ.get("NNODES"):
            mode = "env"
        else:
            raise Hy3Error(f"the recipe is for {nodes} nodes: set IP_LIST=ip1,ip2,... (or pass --ip-list), run "
                           f"under Slurm (srun, one task per node), or set NNODES, NODE_RANK and MASTER_ADDR")
    if port is None:
        port = env_int(environ, "MASTER_PORT", 1, 65535)
    port = DEFAULT_PORT if port is None else integer(port, None, "--master-port", 1, 65535)
    if mode == "single":
        if nodes != 1:
            raise Hy3Error(f"--launcher single runs one node, but the recipe is for {nodes}")
        return Cluster(["localhost"], "localhost", port, 0)
    if mode == "ip-list":
        text = ip_list or environ.get("IP_LIST") or ""
        hosts = parse_ip_list(text, "--ip-list" if ip_list else "IP_LIST")
        if len(set(hosts)) != len(hosts):
            raise Hy3Error(f"IP_LIST lists an address twice: {text}")
        _check_count(len(hosts), nodes, "IP_LIST")
        rank = _node_rank(environ, "NODE_RANK", len(hosts), "IP_LIST")
        if rank is None:
            mine = {environ["LOCAL_IP"]} if environ.get("LOCAL_IP") else (local if local is not None else local_addresses())
            found = [i for i, h in enumerate(hosts) if h in mine]
            rank = found[0] if found else None
        return Cluster(hosts, hosts[0], port, rank)
    if mode == "env":
        missing = [k for k in ("NNODES", "MASTER_ADDR") if not environ.get(k)]
        if missing:
            raise Hy3Error(f"--launcher env needs {', '.join(missing)} in the environment")
        n = env_int(environ, "NNODES", lo=1)
        _check_count(n, nodes, "NNODES")
        rank = _node_rank(environ, "NODE_RANK", n, "NNODES")
        hosts = [environ["MASTER_ADDR"]] + [""] * (n - 1)   # the scheduler knows the others
        return Cluster(hosts, environ["MASTER_ADDR"], port, rank)
    if mode == "slurm":
        if not environ.get("SLURM_JOB_NODELIST"):
            raise Hy3Error("--launcher slurm needs SLURM_JOB_NODELIST (run inside an allocation, via srun)")
        hosts = expand_hostlist(environ["SLURM_JOB_NODELIST"])
        _check_count(len(hosts), nodes, "SLURM_JOB_NODELIST")
        rank = _node_rank(environ, "SLURM_NODEID", len(hosts), "SLURM_JOB_NODELIST")
        return Cluster(hosts, hosts[0], port, rank)
    raise Hy3Error(f"unknown launcher {mode!r}; expected one of {', '.join(MODES)}")


HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def parse_ip_list(text: str, name: str = "IP_LIST") -> list[str]:
    """ip1,ip2,... (master first): every entry an IPv4/IPv6 address or a host name, none empty."""
    if not text.strip():
        raise Hy3Error(f"{name} is empty; expected ip1,ip2,... with the master first")
    hosts = [h.strip() for h in text.split(",")]
    for i, h in enumerate(hosts, 1):
        if not h:
            raise Hy3Error(f"{name}={text}: entry {i} is empty; expected ip1,ip2,... with no empty entries")
        if not valid_host(h):
            raise Hy3Error(f"{name}={text}: entry {i}, {h!r}, is not an IP address or host name")
    return hosts


def valid_host(h: str) -> bool:
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+", h):   # all digits and dots: meant as an IPv4 address, and not a valid one
        return False
    return bool(HOSTNAME.match(h))


def _node_rank(environ: dict, name: str, n: int, source: str) -> int | None:
    """This node's rank from the environment: an integer naming one of the n nodes, or None when unset."""
    return env_int(environ, name, 0, n - 1, expected=f"an integer from 0 to {n - 1} ({source} names {n} node(s))")


def _check_count(found: int, nodes: int, source: str) -> None:
    if found != nodes:
        raise Hy3Error(f"{source} names {found} node(s), but the recipe is planned for {nodes}; "
                       f"use a matching allocation or re-plan with --nodes {found}")


def megatron_argv(recipe: Recipe, paths: dict, export: str | None = None) -> list[str]:
    """`megatron sft` (or `megatron export`) and its flags: path options first, then the recipe's arguments,
    with the Hy3 plugin always passed by its installed path (swift/recipe.py)."""
    paths = {k: v for k, v in paths.items() if v not in (None, [], "")}
    recipe = replace(recipe, args=with_plugin(recipe.args))
    if export:
        accepted = command_fields("export")
        keep = ("custom_register_path", "tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
                "expert_tensor_parallel_size", "sequence_parallel", "decoder_first_pipeline_num_layers",
                "decoder_last_pipeline_num_layers", "mtp_num_layers", "megatron_extra_kwargs", "moe_grouped_gemm",
                "torch_dtype")
        args = {k: recipe.args[k] for k in keep if k in recipe.args and k in accepted}
        flag = {"to-hf": "to_hf", "to-mcore": "to_mcore"}[export]
        merged = {**paths, flag: True, **{k: v for k, v in args.items() if k not in paths}}
        return ["megatron", "export", *to_cli(merged)]
    merged = {**paths, **{k: v for k, v in recipe.args.items() if k not in paths}}
    return ["megatron", "sft", *to_cli(merged)]


def node_commands(recipe: Recipe, cluster: Cluster, argv: list[str]) -> list[NodeCommand]:
    n = len(cluster.hosts)
    out = []
    for rank, host in enumerate(cluster.hosts):
        env = {"NPROC_PER_NODE": str(recipe.cluster.gpus_per_node)}
        if n > 1:
            env.update(NNODES=str(n), NODE_RANK=str(rank), MASTER_ADDR=cluster.master, MASTER_PORT=str(cluster.port))
        env.update(NCCL_ENV)
        env.update(recipe.env)
        out.append(NodeCommand(rank, host, env, list(argv)))
    return out


def format_dry_run(cmds: list[NodeCommand]) -> str:
    n = len(cmds)
    blocks = []
    for c in cmds:
        title = f"# node {c.rank} of {n}" + (f": {c.host}" if n > 1 and c.host else "")
        blocks.append(title + "\n" + c.shell())
    return "\n\n".join(blocks)


# --- pre-flight: the same checks for `--dry-run` and a real run -------------------------------------

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def check_model_dir(model: str, need_weights: bool, flag: str = "--model") -> Hy3Config:
    """The HF directory ms-swift is given: a directory with config.json, a tokenizer and (unless the weights
    come from --mcore-model) safetensors weights in the published inner layout. Its config."""
    root = Path(model)
    if not root.is_dir():
        raise Hy3Error(f"{flag} {model}: no such directory (expected the Hy3 checkpoint directory: config.json, "
                       "tokenizer and weights in the published inner layout)")
    cfg = load_config(root)
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        raise Hy3Error(f"{flag} {model}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); ms-swift reads the "
                       "tokenizer and chat template from the model directory")
    keys = _weight_keys(root)
    if not keys:
        if need_weights:
            raise Hy3Error(f"{flag} {model}: no weights ({INDEX_NAME} or *.safetensors); give the checkpoint "
                           "directory, or the weights as --mcore-model DIR (from `hy3 convert hf-to-mcore`)")
        return cfg
    layout = detect_layout(keys)
    if layout == "outer":
        raise Hy3Error(f"{flag} {model}: the weights are in the outer layout (fused 3D experts); ms-swift reads the "
                       f"published inner layout: `hy3 convert outer-to-inner {model} {model}-inner` and pass that")
    if layout == "mixed":
        raise Hy3Error(f"{flag} {model}: holds both inner and outer expert tensors; run `hy3 check {model}`")
    return cfg


def _weight_keys(root: Path) -> list[str]:
    """Tensor names from the index (or the shard headers without one); reads no tensor data."""
    index = root / INDEX_NAME
    if index.is_file():
        try:
            return list(json.loads(index.read_text()).get("weight_map") or {})
        except (OSError, ValueError, AttributeError):
            raise Hy3Error(f"{index}: not a valid safetensors index; run `hy3 check {root}`") from None
    return [k for f in sorted(root.glob("*.safetensors")) for k in read_header(f)[0]]


def check_dataset(d: str) -> None:
    """A local dataset exists and is not empty: a file of rows with at least one non-blank character, or a
    directory from `hy3 data encode --swift-dataset`. Anything that is not a local path is a dataset id."""
    p = Path(d)
    rows = p.suffix in (".jsonl", ".json")
    if not p.exists():
        if rows or d.startswith(("/", "./", "../", "~")):
            raise Hy3Error(f"--dataset {d}: no such file or directory")
        return   # a ModelScope / Hugging Face dataset id, for ms-swift's loader
    if p.is_dir():
        if not any(p.iterdir()):
            raise Hy3Error(f"--dataset {d}: an empty directory (expected a dataset from `hy3 data encode "
                           f"--swift-dataset`)")
        return
    if not _has_text(p):
        raise Hy3Error(f"--dataset {d}: empty (no rows; the file is empty or holds only blank lines)")


def _has_text(path: Path) -> bool:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return True
    return False


def check_output_dir(out: str, inputs: list[str]) -> None:
    """The run directory ms-swift writes into, by the output rules: never an input, never a link or a file,
    never a directory hy3 wrote as something else (a rerun into the same run directory resumes)."""
    check_not_an_input(out, [p for p in inputs if p and Path(p).exists()])
    p = Path(out)
    if p.is_symlink():
        raise Hy3Error(f"--output-dir {out}: refused: a symbolic link; give the path it points to")
    if p.exists() and not p.is_dir():
        raise Hy3Error(f"--output-dir {out}: refused: exists and is not a directory")
    kind = written_kind(p) if p.is_dir() else None
    if kind is not None:
        raise Hy3Error(f"--output-dir {out}: refused: it holds a {kind} that hy3 wrote; ms-swift would write its "
                       "runs into it: choose another directory")


def visible_gpus(environ: dict) -> tuple[int, str]:
    """How many GPUs this node's processes will see, and how that was found: `nvidia-smi -L`, narrowed by
    CUDA_VISIBLE_DEVICES as CUDA narrows it (indices or UUIDs, up to the first one that names no GPU)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0, "nvidia-smi is not on PATH"
    try:
        proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return 0, f"nvidia-smi -L failed ({e})"
    if proc.returncode:
        return 0, f"nvidia-smi -L failed: {(proc.stderr or proc.stdout).strip().splitlines()[:1]}"
    gpus = [ln for ln in proc.stdout.splitlines() if ln.startswith("GPU ")]
    cvd = environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is None:
        return len(gpus), f"nvidia-smi -L lists {len(gpus)}"
    uuids = [m.group(1) for ln in gpus if (m := re.search(r"UUID: (GPU-[0-9a-fA-F-]+)", ln))]
    n = 0
    for item in (x.strip() for x in cvd.split(",")):
        ok = (item.isdigit() and int(item) < len(gpus)) or (item.startswith("GPU-") and
                                                            any(u.startswith(item) for u in uuids))
        if not ok:
            break
        n += 1
    return n, f"CUDA_VISIBLE_DEVICES={cvd} of the {len(gpus)} nvidia-smi -L lists"


def check_gpus(gpus_per_node: int, environ: dict) -> None:
    """A real run: the GPUs this node sees are the recipe's gpus_per_node (one process each)."""
    n, how = visible_gpus(environ)
    if n == gpus_per_node:
        return
    fix = (f"fix CUDA_VISIBLE_DEVICES or re-plan with --gpus-per-node {n}" if n else
           "launch on a GPU node (--dry-run prints the commands anywhere)")
    raise Hy3Error(f"this node sees {n} GPU(s) ({how}), but the recipe starts {gpus_per_node} processes per node "
                   f"(cluster.gpus_per_node); {fix}")


# --- the launch: the same checks, plan and commands for `--dry-run` and a real run -------------------------

@dataclass
class Launch:
    recipe: Recipe
    model: str | None
    data: DataPlan        # the Hy3 rows node 0 encodes first
    argv: list
    cluster: Cluster
    cmds: list            # every node's NodeCommand


def prepare_launch(recipe: Recipe, environ: dict, model: str | None = None, mcore_model: str | None = None,
                   mcore_adapter: str | None = None, datasets: list | None = None, output_dir: str | None = None,
                   export: str | None = None, launcher: str = "auto", ip_list: str | None = None,
                   master_port: int | None = None, skip_plan: bool = False) -> Launch:
    """What `megatron sft` (or `megatron export`) would reject, the pre-flight checks and the plan, then every
    node's command. The plan is printed on stderr when it refuses the recipe, its warnings and notes always."""
    if recipe.args.get("max_length") is not None:  # 0 would mean "no limit" to the encoder, not what was asked
        integer(recipe.args["max_length"], f"{recipe.path}: args", "max_length", lo=1)
    data = plan_data(datasets, output_dir, recipe.args) if not export else plan_data([], None, {})
    paths = {"model": model, "mcore_model": mcore_model, "mcore_adapter": mcore_adapter,
             **(data.flags() if not export else {"dataset": datasets}), "output_dir": output_dir}
    command = "export" if export else "sft"
    flags = dict(recipe.args, **{k: v for k, v in paths.items() if v})
    if export:
        problems = check_args({k: v for k, v in paths.items() if v}, "export", where="hy3 launch")
        if not mcore_model and not model:
            problems.append("--export needs --mcore-model (to-hf) or --model (to-mcore)")
    else:
        problems = check_args(flags, "sft", where=f"{recipe.path}: args", lines=recipe.lines)
        if not flags.get("model"):
            problems.append("no model: pass --model HF_DIR (config and tokenizer are read from it)")
        if not (flags.get("dataset") or flags.get("cached_dataset")):
            problems.append("no training data: pass --dataset FILE.jsonl (or set dataset in the recipe)")
        if data.problem:
            problems.append(data.problem)
    if problems:
        raise Hy3Error(f"`megatron {command}` would reject this: " + "; ".join(problems))

    # pre-flight: what a real run checks, a dry run checks too (GPUs aside)
    cfg = check_model_dir(model, need_weights=not mcore_model) if model else None
    for flag, d in (("--mcore-model", mcore_model), ("--mcore-adapter", mcore_adapter)):
        if d and not Path(d).is_dir():
            raise Hy3Error(f"{flag} {d}: no such directory (expected a Megatron torch_dist checkpoint)")
    for d in datasets or []:
        check_dataset(d)
    if output_dir:  # ms-swift writes there: never into an input (outputs.py); ids of the hub are no paths
        check_output_dir(output_dir, [model, mcore_model, mcore_adapter, *(datasets or [])])
    if not export and "template" not in recipe.args:
        # the plugin's template: it trains a row's reasoning_effort and reasoning_content (ms-swift's hy_v3 drops them)
        paths["template"] = template_for(model)
    argv = megatron_argv(recipe, paths, export)
    if not export and not skip_plan:
        plan = plan_recipe(recipe, cfg)
        if not plan.ok:
            print(format_plan(plan), file=sys.stderr)
            what = f"{model}'s config.json" if cfg else "the bundled Hy3 config"
            raise Hy3Error(f"{recipe.path}: {plan.verdict} (planned for {what}); fix the recipe (see the plan above) "
                           f"or pass --skip-plan")
        for kind, lines in (("warning", plan.warnings), ("note", plan.notes)):
            for line in lines:
                print(f"hy3 launch: {kind}: {line}", file=sys.stderr)

    cluster = resolve_cluster(launcher, recipe.cluster.nodes, environ, ip_list, master_port)
    return Launch(recipe, model, data, argv, cluster, node_commands(recipe, cluster, argv))


def start_node(launch: Launch, environ: dict, data_timeout: float) -> None:
    """A real run on this node: its own checks, the data (node 0 encodes it, the others wait for it), then its
    command in place of this process."""
    rank = launch.cluster.this_rank
    if rank is None:
        raise Hy3Error(f"cannot tell which node this is among {', '.join(h for h in launch.cluster.hosts if h)}: "
                       f"set LOCAL_IP or NODE_RANK")
    if not shutil.which(launch.argv[0]):
        raise Hy3Error(f"`{launch.argv[0]}` is not on PATH; install ms-swift (see Dockerfile) on every node")
    check_gpus(launch.recipe.cluster.gpus_per_node, environ)
    if launch.data.encodings:
        if rank == 0:
            encode_all(launch.data, launch.model)
        else:
            wait_for(launch.data, data_timeout)
    mine = launch.cmds[rank]
    print(f"hy3 launch: node {mine.rank} of {len(launch.cmds)}\n{mine.shell()}", file=sys.stderr, flush=True)
    os.execvpe(mine.argv[0], mine.argv, dict(environ, **mine.env))
