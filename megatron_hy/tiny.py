"""Tiny random Hy3 checkpoints for tests and the demo.

The decoder is built and saved by transformers' `HYV3ForCausalLM`, so tensor names, shapes and
layout are what the real library writes. transformers has no MTP module, so the MTP layer is
built as one more MoE decoder layer of the same model and given its four MTP-only tensors.
The tensors are then re-sharded so that one MoE layer's experts straddle a shard boundary,
as in the published checkpoint.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Hy3Config
from .data.tokenizer import write_standin_tokenizer
from .dtypes import dtype_name, torch_dtype, torch_name
from .errors import Hy3Error
from .formats.safetensors_io import OutTensor, shard_name, write_index, write_shard
from .formats.staging import new_dir
from .mapping import EMBED, fused_parts, keeps_dtype, logical_tensors
from .outputs import check_dir, HF_CHECKPOINT
from .progress import log, Progress


@dataclass
class TinySpec:
    layers: int = 3
    dense_layers: int = 1
    experts: int = 8
    top_k: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    ffn: int = 96
    expert_ffn: int = 32
    shared_experts: int = 1
    vocab: int = 512
    mtp: int = 1
    shards: int = 4

    def config(self, dtype: str) -> Hy3Config:
        if not 0 <= self.dense_layers <= self.layers:
            raise Hy3Error(f"--dense-layers {self.dense_layers} must be between 0 and --layers {self.layers}")
        return Hy3Config(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn,
            num_layers=self.layers, num_heads=self.heads, num_kv_heads=self.kv_heads, head_dim=self.head_dim,
            num_experts=self.experts, top_k=self.top_k, moe_ffn=self.expert_ffn,
            num_shared_experts=self.shared_experts, router_scaling_factor=2.826,
            layer_types=tuple(["dense"] * self.dense_layers + ["sparse"] * (self.layers - self.dense_layers)),
            num_mtp_layers=self.mtp, max_position_embeddings=4096, dtype=torch_name(dtype),
            raw={"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        )


def _randomize(model, seed: int) -> None:
    """Deterministic, well-scaled values for every tensor (norms near 1, a non-zero expert bias)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            t.copy_(_value(name, t.shape, gen))


def _value(name: str, shape, gen):
    import torch

    if "norm" in name:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if keeps_dtype(name):  # the router's expert bias
        return 0.05 * torch.randn(shape, generator=gen)
    if name == EMBED:
        return torch.randn(shape, generator=gen)
    return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])


def _mtp_extras(cfg: Hy3Config, seed: int, dtype) -> dict:
    import torch

    gen = torch.Generator().manual_seed(seed + 7919)
    return {t.name: _value(t.name, t.shape, gen).to(dtype) for t in logical_tensors(cfg) if t.spec.scope == "mtp"}


def build_state(cfg: Hy3Config, seed: int, dtype: str = "bf16", bias_dtype: str = "fp32", step=None) -> dict:
    """All logical (inner-layout) tensors of a random tiny Hy3, saved through transformers. The router's
    expert bias is fp32, as transformers keeps it, unless bias_dtype says otherwise (a checkpoint may hold
    it in bf16). step(text): told as each stage starts."""
    step = step or (lambda text: None)
    step("importing transformers")
    import torch
    from safetensors.torch import load_file
    from transformers import HYV3Config, HYV3ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tdtype = torch_dtype(dtype)
    hf = cfg.to_transformers()
    # The MTP layers are built as extra MoE decoder layers of the same model.
    hf["num_hidden_layers"] = cfg.num_layers + cfg.num_mtp_layers
    hf["mlp_layer_types"] = list(cfg.layer_types) + ["sparse"] * cfg.num_mtp_layers
    step("building the model with transformers' HYV3ForCausalLM")
    torch.manual_seed(seed)
    model = HYV3ForCausalLM(HYV3Config(**hf))
    step(f"random weights (seed {seed}), saved through transformers")
    _randomize(model, seed)
    model = model.to(tdtype)
    for mod in model.modules():
        if hasattr(mod, "e_score_correction_bias"):
            mod.e_score_correction_bias.data = mod.e_score_correction_bias.data.float().to(torch_dtype(bias_dtype))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        state = {}
        for f in sorted(Path(tmp).glob("*.safetensors")):
            state.update(load_file(f))
    state.update(_mtp_extras(cfg, seed, tdtype))
    want = {t.name for t in logical_tensors(cfg)}
    if set(state) != want:
        raise RuntimeError(f"transformers wrote unexpected tensors: {sorted(set(state) ^ want)[:5]}")
    return state


def tensor_bytes(t) -> bytes:
    import torch

    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def _ordered(cfg: Hy3Config, state: dict, layout: str) -> list[OutTensor]:
    import torch

    def out(key, t):
        return OutTensor(key, dtype_name(t.dtype), tuple(t.shape), [tensor_bytes(t)])

    if layout == "inner":
        return [out(t.name, state[t.name]) for t in logical_tensors(cfg)]

    fused = fused_parts(cfg)
    tensors, done = [], set()
    for t in logical_tensors(cfg):
        if t.expert is None:
            tensors.append(out(t.outer_key, state[t.name]))
        elif t.outer_key not in done:
            done.add(t.outer_key)
            parts = fused[t.outer_key]
            per_expert = [torch.cat([state[p.name] for p in parts if p.expert == e], 0) for e in range(cfg.num_experts)]
            tensors.append(out(t.outer_key, torch.stack(per_expert)))
    return tensors


def _split_points(cfg: Hy3Config, tensors: list[OutTensor], shards: int, layout: str) -> list[int]:
    """Tensor indices where new shards start: by size, plus one inside the first MoE layer's experts."""
    total = sum(t.nbytes for t in tensors)
    points, acc, k = set(), 0, 1
    for i, t in enumerate(tensors):
        if k < shards and acc >= total * k / shards:
            points.add(i)
            k += 1
        acc += t.nbytes
    if layout == "inner" and cfg.moe_layers:
        layer, expert = cfg.moe_layers[0], cfg.num_experts // 2
        mid = next(t.name for t in logical_tensors(cfg) if t.layer == layer and t.expert == expert)
        points.add(next(i for i, t in enumerate(tensors) if t.key == mid))
    return sorted(points)


def write_tiny(outdir: str | Path, spec: TinySpec, fmt: str = "inner", seed: int = 0, dtype: str = "bf16",
               config_style: str = "transformers", tokenizer: bool = True, overwrite: bool = False,
               layer_types: tuple | None = None, bias_dtype: str = "fp32", quiet: bool = True) -> Path:
    """layer_types: "dense"/"sparse" per decoder layer, any pattern, instead of spec.dense_layers leading dense ones.
    Progress (building the model, then the shards) goes to stderr unless quiet."""
    outdir = Path(outdir)
    if fmt not in ("inner", "outer"):
        raise Hy3Error(f"--format must be inner or outer, not {fmt!r}")
    check_dir(outdir, HF_CHECKPOINT, overwrite=overwrite)
    cfg = spec.config(dtype)
    if layer_types is not None:
        if len(layer_types) != spec.layers:
            raise Hy3Error(f"layer_types has {len(layer_types)} entries for {spec.layers} layers")
        cfg = replace(cfg, layer_types=tuple(layer_types))
    t0, n = time.monotonic(), iter(range(1, 5))

    def step(text: str) -> None:
        log(f"[make-tiny] step {next(n)} of 4 ({time.monotonic() - t0:.0f}s): {text}", quiet)

    state = build_state(cfg, seed, dtype, bias_dtype, step)
    tensors = _ordered(cfg, state, fmt)
    points = [0] + _split_points(cfg, tensors, spec.shards, fmt) + [len(tensors)]
    groups = [tensors[a:b] for a, b in zip(points, points[1:]) if b > a]
    step(f"writing {len(tensors)} tensors in {len(groups)} shards")

    with new_dir(outdir, HF_CHECKPOINT, overwrite=overwrite) as tmp:
        weight_map = {}
        prog = Progress("make-tiny", sum(t.nbytes for t in tensors), quiet=quiet)
        for n, group in enumerate(groups):
            name = shard_name(n, len(groups))
            write_shard(tmp / name, group, prog.add)
            weight_map.update({t.key: name for t in group})
        prog.finish()
        write_index(tmp, weight_map, sum(t.nbytes for t in tensors))
        conf = cfg.to_tencent() if config_style == "tencent" else _transformers_config(cfg)
        (tmp / "config.json").write_text(json.dumps(conf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": True, "temperature": 0.9},
            indent=2) + "\n")
        if tokenizer:
            _write_tokenizer(tmp, cfg)
    log(f"wrote {outdir}: tiny Hy3 ({fmt} layout), {len(tensors)} tensors in {len(groups)} shards, "
        f"in {time.monotonic() - t0:.1f}s", quiet)
    return outdir


def _transformers_config(cfg: Hy3Config) -> dict:
    from transformers import HYV3Config

    d = HYV3Config(**cfg.to_transformers()).to_dict()
    d["architectures"] = ["HYV3ForCausalLM"]
    d["dtype"] = cfg.dtype
    d.pop("transformers_version", None)
    return d


def _write_tokenizer(root: Path, cfg: Hy3Config) -> None:
    write_standin_tokenizer(root, vocab_size=cfg.vocab_size)
