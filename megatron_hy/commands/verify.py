"""`hy3 verify parity`: prove a checkpoint is Hy3 in Megatron, on GPUs or a CPU, under a parallel layout,
for the whole model or some of its decoder layers."""

from __future__ import annotations

import json

from ..errors import Hy3Error
from ..fields import index_list, POSITIVE_FLOAT, POSITIVE_INT
from ..megatron.device import DTYPES
from ..megatron.parity import run_parity as run, TOLERANCE, verify_parity
from .common import add_checkpoint_flag, add_json, add_model_operand, model_operand, picked_checkpoint, RUN_HELP


def register(sub) -> None:
    p = sub.add_parser("verify", help="numerical checks against transformers",
                       description="Numerical checks of Megatron Hy3 against transformers' HYV3ForCausalLM.")
    v = p.add_subparsers(dest="check", metavar="CHECK", required=True)
    q = v.add_parser("parity", help="Megatron logits vs transformers on GPUs or a CPU under a TP/PP/VPP/EP/ETP layout",
                     description="Load the checkpoint (or, with --layers, some of its decoder layers plus the "
                                 "embedding, final norm, output layer and MTP layer) into megatron-core's GPTModel "
                                 "under the given layout, one process per rank (one GPU each over NCCL, or this "
                                 "CPU over gloo), run random tokens through it and through transformers' "
                                 "HYV3ForCausalLM of the same layers plus the reference MTP forward (fp32, on the "
                                 "CPU), and compare the logits and each MTP depth's logits. fp32: relative error "
                                 "max|megatron - reference| / max|reference| at most --tolerance. bf16 (the model "
                                 "cast as megatron-core's Float16Module casts it): top-1 agreement >= 0.85 and the "
                                 "cosine similarity of each position's centered logits >= 0.98 on average. "
                                 "It also counts the tokens Megatron's router sent to each routed expert and "
                                 "says how many experts received none (their weights were not compared). "
                                 "Progress goes to stderr, results to stdout. Exit 1 when the check fails.")
    add_model_operand(q, "hf_dir", "HF_DIR", "HF Hy3 checkpoint (inner or outer layout): the reference, and the "
                                             "Megatron side's weights unless --mcore or --adapter says otherwise")
    q.add_argument("--device", choices=("cuda", "cpu"), default=None,
                   help="where Megatron runs: cuda (one GPU per rank, NCCL; the transformer-engine spec when "
                        "transformer_engine imports, megatron-core's local spec otherwise) or cpu (gloo, local "
                        "spec). Default: cuda when torch sees a GPU, else cpu")
    q.add_argument("--layers", metavar="LIST", type=index_list, default=None,
                   help="build only these decoder layers (0-based, as in model.layers.N; e.g. 0,1,79 or 0-3), "
                        "plus embedding, final norm, output layer and the MTP layer, on both sides; reads only "
                        "their tensors. Default: every layer")
    q.add_argument("--dtype", choices=DTYPES, default="fp32",
                   help="the Megatron model's dtype (default fp32); the reference is always fp32")
    q.add_argument("--tp", type=POSITIVE_INT, default=1, help="tensor parallel size (default 1)")
    q.add_argument("--pp", type=POSITIVE_INT, default=1, help="pipeline parallel size (default 1)")
    q.add_argument("--vpp", type=POSITIVE_INT, default=None,
                   help="virtual pipeline stages per pipeline rank (interleaved schedule; needs --pp 2 or more; "
                        "PP x VPP must divide the decoder layers; default: none)")
    q.add_argument("--ep", type=POSITIVE_INT, default=1, help="expert parallel size (default 1)")
    q.add_argument("--etp", type=POSITIVE_INT, default=None, help="expert tensor parallel size (default: same as --tp)")
    q.add_argument("--mcore", metavar="DIR", default=None,
                   help="load the Megatron side from this torch_dist checkpoint (through megatron-core's "
                        "dist_checkpointing.load) instead of from HF_DIR; HF_DIR stays the reference" + RUN_HELP)
    add_checkpoint_flag(q)
    q.add_argument("--adapter", metavar="DIR", default=None,
                   help="with --base: load --base into Megatron and add this LoRA adapter's delta in Megatron's layout; "
                        "HF_DIR (e.g. the output of `hy3 lora merge`) is the reference")
    q.add_argument("--base", metavar="DIR", default=None, help="base HF checkpoint for --adapter")
    q.add_argument("--tokens", type=POSITIVE_INT, default=16, help="sequence length (default 16)")
    q.add_argument("--batch", type=POSITIVE_INT, default=2, help="sequences (default 2)")
    q.add_argument("--seed", type=int, default=0, help="seed for the random tokens (default 0)")
    q.add_argument("--tolerance", type=POSITIVE_FLOAT, default=None,
                   help="largest accepted relative error with --dtype fp32 (default 1e-5)")
    add_json(q)
    q.add_argument("--quiet", action="store_true", help="no progress lines")
    q.set_defaults(func=run_parity)


def run_parity(args) -> int:
    if (args.adapter is None) != (args.base is None):
        raise Hy3Error("--adapter and --base go together")
    if args.adapter and args.mcore:
        raise Hy3Error("--mcore and --adapter cannot be combined")
    if args.adapter and args.layers is not None:
        raise Hy3Error("--layers and --adapter cannot be combined: the adapter check builds the whole model")
    hf_dir = model_operand(args, "hf_dir", "HF_DIR")
    if args.mcore:
        args.mcore = picked_checkpoint(args.mcore, args.checkpoint, args.quiet)
    elif args.checkpoint is not None:
        raise Hy3Error("--checkpoint picks a checkpoint of an ms-swift run given as --mcore")
    if args.tolerance is not None and args.dtype == "bf16":
        raise Hy3Error("--tolerance bounds the fp32 relative error; --dtype bf16 is judged by top-1 agreement "
                       "and cosine similarity")
    common = dict(tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, tokens=args.tokens, batch=args.batch,
                  seed=args.seed, tolerance=args.tolerance or TOLERANCE, vpp=args.vpp, layers=args.layers,
                  device=args.device, dtype=args.dtype, quiet=args.quiet)
    if args.adapter:
        res = run(hf_dir, [("hf+lora", (args.base, args.adapter))], **common)[0][0]
    else:
        res = verify_parity(hf_dir, mcore_dir=args.mcore, **common)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        print_result(res, "torch_dist" if args.mcore else "base + LoRA delta" if args.adapter else "HF")
    return 0 if res.passed else 1


def print_result(res, source: str) -> None:
    print(f"parity {res.layout} on {res.device}, {res.dtype}, megatron-core {res.spec} spec: "
          f"Megatron ({source} weights) vs transformers (fp32), {res.tokens} tokens")
    print(f"  decoder layers {_ranges(res.layers)}" + (" + MTP" if res.mtp_max_abs_err else ""))
    print(f"  logits       max abs {res.max_abs_err:.3e}  max rel {res.max_rel_err:.3e}  "
          f"top-1 {res.top1_agreement:.3f}  cosine mean {res.mean_cosine:.5f} min {res.min_cosine:.5f}")
    for k, a in enumerate(res.mtp_max_abs_err):
        print(f"  MTP depth {k + 1}  max abs {a:.3e}")
    if res.mtp_max_rel_err is not None:
        print(f"  MTP          max rel {res.mtp_max_rel_err:.3e}  top-1 {res.mtp_top1_agreement:.3f}  "
              f"cosine mean {res.mtp_mean_cosine:.5f} min {res.mtp_min_cosine:.5f}")
    pairs = sum(len(c) for c in res.expert_tokens.values())
    if res.experts_without_tokens:
        print(f"  experts      {res.experts_without_tokens} of {pairs} (layer, expert) pairs received no tokens: "
              "their weights were not compared; use more --tokens or another --seed")
    elif pairs:
        print(f"  experts      every one of {pairs} (layer, expert) pairs received tokens")
    if res.dtype == "bf16":
        judged = (f"top-1 >= {res.bounds['top1_agreement']:g} and mean cosine >= {res.bounds['mean_cosine']:g} "
                  "for logits and each MTP depth; max rel and min cosine not judged in bf16")
    else:
        judged = f"tolerance {res.tolerance:g}"
    print(f"  {'PASSED' if res.passed else 'FAILED'} ({judged})")


def _ranges(layers: list) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts)
