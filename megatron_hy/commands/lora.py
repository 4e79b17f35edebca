"""`hy3 lora`: merge LoRA adapters into Hy3, or export them as a PEFT adapter, offline."""

from __future__ import annotations

from pathlib import Path

from ..dtypes import CAST
from ..fields import POSITIVE_FLOAT, POSITIVE_INT
from ..lora.export import export_peft
from ..lora.merge import merge_lora
from ..lora.tiny import write_tiny_adapter
from ..outputs import OUT_DIR_HELP, OVERWRITE_DIR_HELP
from ..progress import log
from ..swift.runs import holds_torch_dist
from .common import (RUN_HELP, add_checkpoint_flag, add_json, add_model_flag, add_model_operand, emit, model_operand,
                     picked_checkpoint)

ADAPTER_HELP = ("adapter directory: a Megatron torch_dist adapter checkpoint (ms-swift --mcore_adapter / "
                "--save_safetensors false), ms-swift's safetensors adapter, or an HF PEFT adapter for HYV3"
                + RUN_HELP + "; a checkpoint with both formats is read as safetensors")
RSLORA_HELP = ("scaling: auto (default) uses alpha/r for adapters trained with ms-swift's Megatron LoRA, whose layers "
               "ignore use_rslora, and the adapter config's use_rslora otherwise; on: alpha/sqrt(r); off: alpha/r")


def register(sub) -> None:
    p = sub.add_parser("lora", help="merge or export LoRA adapters", description="LoRA adapters for Hy3, offline and on CPU.")
    s = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    q = s.add_parser("merge", help="merge an adapter into the base weights (HF safetensors out)",
                     description="Write base + scaling * B @ A as an HF checkpoint in the base's layout (inner or "
                                 "outer), streaming tensor by tensor with bounded memory; untouched tensors are copied "
                                 "byte for byte. Every target kind is supported: attention, dense MLP, shared and "
                                 "routed experts, router, MTP layer. The result passes `hy3 check`.")
    add_model_flag(q, "the base HF Hy3 checkpoint (inner or outer layout)", required=True, aliases=("--base",))
    q.add_argument("--adapter", required=True, metavar="DIR", help=ADAPTER_HELP)
    add_checkpoint_flag(q)
    q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
    q.add_argument("--dtype", choices=CAST, default=None,
                   help="weight dtype of the output (default: the base's; the router expert bias stays fp32)")
    q.add_argument("--rslora", choices=["auto", "on", "off"], default="auto", help=RSLORA_HELP)
    q.add_argument("--workers", type=int, default=4, help="shards written in parallel (default 4)")
    q.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB (default 5GB)")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(q)
    q.set_defaults(func=run_merge)

    q = s.add_parser("export-peft", help="export an adapter as a PEFT adapter for transformers' HYV3ForCausalLM",
                     description="Write adapter_config.json + adapter_model.safetensors with HYV3 module names that "
                                 "peft.PeftModel.from_pretrained loads onto HYV3ForCausalLM (vLLM serves the same). "
                                 "Routed experts use PEFT target_parameters on the fused 3D expert tensors. Targets "
                                 "with no PEFT equivalent (MTP layer, router) are listed by name; --strict fails on them.")
    q.add_argument("--adapter", required=True, metavar="DIR", help=ADAPTER_HELP)
    add_checkpoint_flag(q)
    add_model_flag(q, "the base HF Hy3 checkpoint the adapter belongs to", required=True, aliases=("--base",))
    q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
    q.add_argument("--rslora", choices=["auto", "on", "off"], default="auto", help=RSLORA_HELP)
    q.add_argument("--strict", action="store_true", help="fail if any LoRA target has no PEFT equivalent")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(q)
    q.set_defaults(func=run_export)

    q = s.add_parser("make-tiny", help="write a random adapter for a (tiny) Hy3, as ms-swift's Megatron LoRA saves it",
                     description="Write random LoRA factors for the given Hy3 checkpoint in ms-swift's Megatron formats "
                                 "(torch_dist adapter checkpoint, or its safetensors export). For tests and the demo.")
    add_model_operand(q, "base", "HF_DIR", "the HF Hy3 checkpoint the adapter is for")
    q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
    q.add_argument("--format", choices=["mcore", "swift-peft"], default="mcore", help="adapter format (default mcore)")
    q.add_argument("--targets", default="attention,dense,shared,experts,mtp",
                   help="comma-separated kinds: attention, dense, shared, experts, mtp, router "
                        "(default attention,dense,shared,experts,mtp)")
    q.add_argument("--rank", type=POSITIVE_INT, default=4, help="LoRA rank (default 4)")
    q.add_argument("--alpha", type=POSITIVE_FLOAT, default=8.0, help="LoRA alpha (default 8)")
    q.add_argument("--saved-tp", type=POSITIVE_INT, default=1, help="TP size the torch_dist adapter is laid out for (default 1)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--zero", action="store_true", help="all-zero lora_B (a no-op adapter)")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no `wrote` line")
    add_json(q)
    q.set_defaults(func=run_make_tiny)


def _adapter(args):
    """The adapter directory: --adapter itself, or the checkpoint-N picked in an ms-swift run."""
    path = picked_checkpoint(args.adapter, args.checkpoint, args.quiet)
    if path != Path(args.adapter) and not args.quiet:
        kind = ("safetensors adapter (adapter_model.safetensors)" if (path / "adapter_config.json").is_file() else
                "torch_dist adapter checkpoint" if holds_torch_dist(path) else None)
        if kind:
            log(f"reading its {kind}")
    return path


def run_merge(args) -> int:
    emit(args, merge_lora(args.model, _adapter(args), args.output, dtype=args.dtype, workers=args.workers,
                          max_shard_size=args.max_shard_size, rslora=args.rslora, overwrite=args.overwrite,
                          quiet=args.quiet))
    return 0


def run_export(args) -> int:
    emit(args, dict(export_peft(_adapter(args), args.model, args.output, rslora=args.rslora, strict=args.strict,
                                overwrite=args.overwrite, quiet=args.quiet), output=str(args.output)))
    return 0


def run_make_tiny(args) -> int:
    targets = [k for k in args.targets.split(",") if k]
    out = write_tiny_adapter(model_operand(args, "base", "HF_DIR"), args.output, args.format, targets,
                             rank=args.rank, alpha=args.alpha, seed=args.seed, saved_tp=args.saved_tp, zero=args.zero,
                             overwrite=args.overwrite)
    log(f"wrote {out}: random {args.format} LoRA adapter (rank {args.rank}, targets {','.join(targets)})", args.quiet)
    emit(args, {"output": str(out), "format": args.format, "targets": targets, "rank": args.rank,
                "alpha": args.alpha, "seed": args.seed})
    return 0
