"""Random LoRA adapters for a Hy3 checkpoint, written the way ms-swift's Megatron LoRA training writes them.

Factors are made per Megatron module, as Megatron trains them (one lora_A shared by q/k/v and by
gate/up, one lora_B in Megatron's row order), then written as:

* `mcore`: the torch_dist adapter checkpoint (`--mcore_adapter`): `args.json`, tracker, iteration
  directory; keys `<module>.lora_A.default.weight` / `.lora_B.default.weight`, routed experts stacked
  on an expert axis; a GLU `linear_fc1`'s lora_B in the row order of the TP layout it was "saved" under.
* `swift-peft`: the safetensors adapter ms-swift writes next to it (mcore-bridge's HF export): PEFT
  keys with Tencent's names (`shared_mlp`, `mlp.experts.{e}.gate_proj`), lora_A cloned per projection.
"""

from __future__ import annotations

import json
import math
from argparse import Namespace
from pathlib import Path

from ..config import Hy3Config, load_config
from ..errors import Hy3Error
from ..formats import dcp
from ..formats.staging import new_dir
from ..formats.torch_dist import iter_dir_name, TRACKER, write_iteration_files
from ..mapping import logical_tensors, mcore_tensors, MCoreTensor, PEFT_PREFIX, ROUTER, spec
from ..outputs import ADAPTER
from ..transforms import from_mcore

KINDS = ("attention", "dense", "shared", "experts", "mtp", "router")


def _kind(t: MCoreTensor, cfg: Hy3Config) -> str | None:
    """Its kind (KINDS): decoder-layer linears by their row's scope, the router, any of these in an MTP layer."""
    router = t.row.hf[0] == ROUTER
    if t.layer is None or not (spec(t.row.hf[0]).lora or router):
        return None
    if t.layer >= cfg.num_layers:
        return "mtp"
    if router:
        return "router"
    return {"layer": "attention", "moe": "shared", "expert": "experts"}.get(t.row.scope, "dense")


def random_factors(cfg: Hy3Config, kinds, rank: int, seed: int, zero: bool = False) -> dict:
    """Megatron module -> (MCoreTensor, A, B): A [r, in] (or [E, r, in]), B [out, r] in Megatron row order."""
    import torch

    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise Hy3Error(f"unknown LoRA target kind {bad[0]!r}; expected some of {', '.join(KINDS)}")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in mcore_tensors(cfg):
        if _kind(t, cfg) not in kinds:
            continue
        rows, cols = (t.shape[1], t.shape[2]) if t.experts else (t.shape[0], t.shape[1])
        lead = (t.experts,) if t.experts else ()
        A = torch.randn(lead + (rank, cols), generator=gen) / math.sqrt(cols)
        B = torch.randn(lead + (rows, rank), generator=gen) * (0.0 if zero else 0.5 / math.sqrt(rank))
        out[t.key[: -len(".weight")]] = (t, A, B)
    if not out:
        raise Hy3Error(f"no modules of kinds {list(kinds)} in this model")
    return out


def write_mcore_adapter(out: Path, cfg: Hy3Config, factors: dict, alpha: float, saved_tp: int = 1,
                        use_rslora: bool = False) -> Path:
    """Into the empty directory `out`."""
    import torch

    out = Path(out)
    it = out / iter_dir_name(1)
    it.mkdir()
    rank = next(iter(factors.values()))[1].shape[-2]
    chunks, specs = [], []
    for module, (t, A, B) in factors.items():
        if t.row.op == "glu" and t.experts is None and saved_tp > 1:
            half = B.shape[0] // 2
            gate, up = B[:half].reshape(saved_tp, half // saved_tp, -1), B[half:].reshape(saved_tp, half // saved_tp, -1)
            B = torch.stack([gate, up], 1).reshape(B.shape)  # rank t holds [gate_t; up_t]
        for part, x in (("lora_A", A), ("lora_B", B)):
            key = f"{module}.{part}.default.weight"
            x = x.to(torch.bfloat16).contiguous()
            specs.append(dcp.TensorSpec(key, tuple(x.shape), x.dtype))
            chunks.append(dcp.Chunk(key, (0,) * x.dim(), tuple(x.shape), lambda x=x: x))
    res = dcp.write_file(it / "__0_0.distcp", chunks, [])
    dcp.write_metadata(it, specs, [res])
    (it / "__0_0.distcp.items.json").unlink()
    args = {"tuner_type": "lora", "lora_rank": rank, "lora_alpha": alpha, "use_rslora": use_rslora,
            "lora_dropout": 0.05, "target_modules": ["all-linear"], "tensor_model_parallel_size": saved_tp,
            "pipeline_model_parallel_size": 1, "expert_model_parallel_size": 1, "no_save_optim": True,
            "no_save_rng": True}
    write_iteration_files(it, Namespace(**args), 1)
    (out / TRACKER).write_text("1")
    (out / "args.json").write_text(json.dumps(args, indent=2) + "\n")
    return out


def write_swift_peft_adapter(out: Path, cfg: Hy3Config, factors: dict, alpha: float, use_rslora: bool = False) -> Path:
    """Into the empty directory `out`."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    shapes = {t.name: t.shape for t in logical_tensors(cfg)}
    tensors, leaves = {}, set()
    rank = next(iter(factors.values()))[1].shape[-2]
    for module, (t, A, B) in factors.items():
        for e in range(t.experts or 1):
            names = t.sources(e if t.experts else None)
            a, b = (A[e], B[e]) if t.experts else (A, B)
            parts = from_mcore(t.row.op, b, [(shapes[n][0], rank) for n in names], cfg)
            for name, bp in zip(names, parts):
                key = PEFT_PREFIX + name[: -len(".weight")]
                tensors[key + ".lora_A.weight"] = a.to(torch.bfloat16).contiguous().clone()
                tensors[key + ".lora_B.weight"] = bp.to(torch.bfloat16).contiguous()
                leaves.add(name.split(".")[-2])
    save_file(tensors, str(out / "adapter_model.safetensors"))
    conf = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "use_rslora": use_rslora,
            "lora_dropout": 0.05, "bias": "none", "target_modules": sorted(leaves), "target_parameters": None,
            "modules_to_save": [], "base_model_name_or_path": None}
    (out / "adapter_config.json").write_text(json.dumps(conf, indent=2) + "\n")
    (out / "additional_config.json").write_text(json.dumps({"lora_dtype": None}) + "\n")
    (out / "args.json").write_text(json.dumps({"tuner_type": "lora", "lora_rank": rank, "lora_alpha": alpha,
                                               "use_rslora": use_rslora, "tensor_model_parallel_size": 1}) + "\n")
    return out


def write_tiny_adapter(base_dir, out, fmt: str = "mcore", kinds=("attention", "dense", "shared", "experts", "mtp"),
                       rank: int = 4, alpha: float = 8.0, seed: int = 0, saved_tp: int = 1, zero: bool = False,
                       use_rslora: bool = False, overwrite: bool = False) -> Path:
    """The adapter as the directory OUT (see outputs.py for when an existing OUT is replaced)."""
    if fmt not in ("mcore", "swift-peft"):
        raise Hy3Error(f"--format {fmt!r}: expected mcore or swift-peft")
    cfg = load_config(base_dir)
    factors = random_factors(cfg, kinds, rank, seed, zero)
    with new_dir(out, ADAPTER, [base_dir], overwrite) as tmp:
        if fmt == "mcore":
            write_mcore_adapter(tmp, cfg, factors, alpha, saved_tp, use_rslora)
        else:
            write_swift_peft_adapter(tmp, cfg, factors, alpha, use_rslora)
    return Path(out)
