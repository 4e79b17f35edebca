"""`hy3 make-tiny`: write a tiny random Hy3 checkpoint (for tests, the demo and trying things out)."""

from __future__ import annotations

from dataclasses import fields

from ..config import config_from_dict
from ..dtypes import CAST
from ..fields import COUNT, POSITIVE_INT
from ..outputs import OUT_DIR_HELP, OVERWRITE_DIR_HELP
from ..tiny import TinySpec, write_tiny
from .common import add_json, emit


def register(sub) -> None:
    p = sub.add_parser("make-tiny", help="write a tiny random Hy3 checkpoint",
                       description="Write a tiny random Hy3 checkpoint built with transformers' HYV3ForCausalLM: "
                                   "several shards, one MoE layer's experts straddling a shard boundary, MTP "
                                   "layer weights, config.json, index and a stand-in tokenizer. Deterministic "
                                   "from --seed.")
    p.add_argument("outdir", metavar="OUTDIR", help=OUT_DIR_HELP)
    p.add_argument("--format", choices=["inner", "outer"], default="inner",
                   help="inner: one tensor per expert, as published (default); outer: fused 3D expert tensors")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--dtype", choices=CAST, default="bf16", help="weight dtype (default bf16)")
    p.add_argument("--config-style", choices=["transformers", "tencent"], default="transformers",
                   help="spelling of config.json: transformers' HYV3Config (default) or Tencent's")
    p.add_argument("--no-tokenizer", action="store_true", help="do not write the stand-in tokenizer")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(p)
    helps = {"layers": "decoder layers", "dense_layers": "leading dense (non-MoE) layers", "experts": "routed experts",
             "top_k": "experts per token", "hidden": "hidden size", "heads": "attention heads",
             "kv_heads": "key/value heads (GQA groups)", "head_dim": "head dimension", "ffn": "dense FFN size",
             "expert_ffn": "expert FFN size", "shared_experts": "shared experts", "vocab": "vocabulary size",
             "mtp": "MTP layers", "shards": "approximate number of shard files"}
    for f in fields(TinySpec):
        p.add_argument("--" + f.name.replace("_", "-"), type=COUNT if f.name in ("dense_layers", "mtp") else POSITIVE_INT,
                       default=f.default,
                       help=f"{helps[f.name]} (default {f.default})")
    p.set_defaults(func=run)


def run(args) -> int:
    spec = TinySpec(**{f.name: getattr(args, f.name) for f in fields(TinySpec)})
    config_from_dict(spec.config(args.dtype).to_tencent(), "make-tiny flags")  # heads vs kv heads, top-k vs experts
    out = write_tiny(args.outdir, spec, fmt=args.format, seed=args.seed, dtype=args.dtype,
                     config_style=args.config_style, tokenizer=not args.no_tokenizer, overwrite=args.overwrite,
                     quiet=args.quiet)
    emit(args, {"output": str(out), "format": args.format, "dtype": args.dtype, "seed": args.seed,
                "spec": {f.name: getattr(args, f.name) for f in fields(TinySpec)}})
    return 0
