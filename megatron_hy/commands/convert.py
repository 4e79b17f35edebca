"""`hy3 convert DIRECTION ...`: checkpoint conversions."""

from __future__ import annotations

from ..config import load_config
from ..convert.hf_to_mcore import hf_to_mcore
from ..convert.layout import convert_layout
from ..convert.mcore_to_hf import carried_files, mcore_to_hf
from ..dtypes import CAST
from ..errors import Hy3Error
from ..fields import COUNT, POSITIVE_INT
from ..outputs import check_not_an_input, OUT_DIR_HELP, OVERWRITE_DIR_HELP
from ..progress import log
from ..swift.runs import holds_adapter, holds_hf_weights, holds_torch_dist, is_swift_checkpoint
from .common import add_checkpoint_flag, add_json, add_model_flag, emit, picked_checkpoint, RUN_HELP


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert checkpoints between layouts and formats",
                       description="Convert Hy3 checkpoints. Every direction streams with bounded memory, writes "
                                   "to OUT.partial and renames at the end, and resumes when rerun after a kill.")
    d = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    for name, to, what in (("inner-to-outer", "outer", "per-expert (published) layout to fused 3D experts"),
                           ("outer-to-inner", "inner", "fused 3D experts to the per-expert (published) layout")):
        q = d.add_parser(name, help=what, description=f"Convert an HF Hy3 checkpoint from the {what}. "
                                                       "Tensors are copied byte for byte; config, tokenizer and "
                                                       "other files are carried over.")
        q.add_argument("input", metavar="IN", help="input checkpoint directory")
        q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
        q.add_argument("--workers", type=int, default=8, help="shards written in parallel (default 8)")
        q.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB (default 5GB)")
        q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
        q.add_argument("--quiet", action="store_true", help="no progress output")
        add_json(q)
        q.set_defaults(func=run_layout, to=to)

    q = d.add_parser("hf-to-mcore", help="HF checkpoint (either layout) to a Megatron torch_dist checkpoint, on CPU",
                     description="Write a Megatron-Core torch_dist checkpoint (the directory `megatron sft --mcore_model` "
                                 "loads) from an HF Hy3 checkpoint in either layout, MTP included, without a GPU and "
                                 "without building the model with weights: keys, shapes and pieces come from "
                                 "megatron-core's own sharded_state_dict() of a meta-device model; tensors are streamed "
                                 "in chunks of at most 64 MB. The checkpoint loads under any TP/PP/EP/ETP.")
    q.add_argument("input", metavar="HF_DIR", help="HF Hy3 checkpoint (inner or outer layout)")
    q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
    q.add_argument("--workers", type=int, default=4, help="data files written in parallel (default 4)")
    q.add_argument("--dtype", choices=CAST, default=None,
                   help="weight dtype in the checkpoint (default: as in the HF files; the router expert bias stays fp32)")
    q.add_argument("--padded-vocab", type=POSITIVE_INT, default=None,
                   help="rows of the embedding and output layer, if your Megatron run pads the vocabulary "
                        "(default: the vocabulary size, as ms-swift builds Hy3)")
    q.add_argument("--iteration", type=COUNT, default=1, help="iteration number to record (default 1, as swift export)")
    q.add_argument("--max-file-size", default="2GB",
                   help="largest data file, e.g. 2GB; files are the unit a resumed run skips (default 2GB)")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(q)
    q.set_defaults(func=run_hf_to_mcore)

    q = d.add_parser("mcore-to-hf", help="Megatron torch_dist checkpoint (or an ms-swift run) to HF safetensors, on CPU",
                     description="Read a Megatron-Core torch_dist checkpoint (ours, or one saved during training; "
                                 "optimizer state is ignored) tensor by tensor and write sharded HF safetensors with "
                                 "an index. config.json, generation config and tokenizer files come from --model. "
                                 "Given an ms-swift run, the newest checkpoint-N is read (it says which); a checkpoint "
                                 "that ms-swift saved as HF safetensors (save_safetensors, without a torch_dist copy) "
                                 "is written in the --format layout after its config is checked against --model's.")
    q.add_argument("input", metavar="MCORE_DIR", help="checkpoint directory (with latest_checkpointed_iteration.txt) "
                                                       "or one iter_NNNNNNN directory" + RUN_HELP)
    q.add_argument("output", metavar="OUT", help=OUT_DIR_HELP)
    add_model_flag(q, "HF Hy3 directory whose config.json describes the model (its tokenizer files are copied)",
                   required=True, aliases=("--hf-config",))
    q.add_argument("--format", choices=["inner", "outer"], default="inner",
                   help="inner: one tensor per expert, as published (default); outer: fused 3D experts")
    add_checkpoint_flag(q)
    q.add_argument("--iteration", type=COUNT, default=None, help="iteration to read (default: the tracker file's)")
    q.add_argument("--dtype", choices=CAST, default=None,
                   help="weight dtype (default: config.json's dtype; the expert bias stays fp32 as in HF Hy3)")
    q.add_argument("--workers", type=int, default=4, help="shards written in parallel (default 4)")
    q.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB (default 5GB)")
    q.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress output")
    add_json(q)
    q.set_defaults(func=run_mcore_to_hf)


def run_layout(args) -> int:
    emit(args, convert_layout(args.input, args.output, args.to, workers=args.workers,
                              max_shard_size=args.max_shard_size, overwrite=args.overwrite, quiet=args.quiet))
    return 0


def run_hf_to_mcore(args) -> int:
    emit(args, hf_to_mcore(args.input, args.output, workers=args.workers, dtype=args.dtype,
                           padded_vocab=args.padded_vocab, iteration=args.iteration, overwrite=args.overwrite,
                           quiet=args.quiet, max_file_size=args.max_file_size, in_process=True))
    return 0


def run_mcore_to_hf(args) -> int:
    src = picked_checkpoint(args.input, args.checkpoint, args.quiet)
    if holds_adapter(src):
        raise Hy3Error(f"{src}: holds a LoRA adapter, not model weights; merge it with `hy3 lora merge --model "
                       f"{args.model} --adapter {src} OUT` (or export it with `hy3 lora export-peft`)")
    if not holds_torch_dist(src):
        if holds_hf_weights(src) and is_swift_checkpoint(src):   # a plain HF checkpoint is no input here
            emit(args, _from_swift_safetensors(args, src))
            return 0
    emit(args, mcore_to_hf(src, args.output, args.model, fmt=args.format, iteration=args.iteration,
                           workers=args.workers, max_shard_size=args.max_shard_size, dtype=args.dtype,
                           overwrite=args.overwrite, quiet=args.quiet))
    return 0


def _from_swift_safetensors(args, src) -> dict:
    """A checkpoint ms-swift saved as HF safetensors (save_safetensors, through the plugin): its weights in the
    --format layout, with --model's config and tokenizer files, as the torch_dist path writes them."""
    if args.dtype is not None or args.iteration is not None:
        raise Hy3Error(f"{src}: holds HF safetensors, not a torch_dist checkpoint: --dtype and --iteration do not "
                       "apply (its tensors are copied as saved)")

    check_not_an_input(args.output, [args.model])
    if load_config(src).to_transformers() != load_config(args.model).to_transformers():
        raise Hy3Error(f"{src}/config.json describes another model than {args.model}/config.json")
    log(f"{src} holds HF safetensors (ms-swift's save_safetensors), no torch_dist weights: copying them in the "
        f"{args.format} layout", args.quiet)
    return convert_layout(src, args.output, args.format, workers=args.workers, max_shard_size=args.max_shard_size,
                          overwrite=args.overwrite, quiet=args.quiet, other_files=carried_files(args.model))
