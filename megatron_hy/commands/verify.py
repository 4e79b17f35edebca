"""`hy3 verify parity`: prove a checkpoint is Hy3 in Megatron, on CPU, under a parallel layout."""

from __future__ import annotations

import json

from ..fields import POSITIVE_FLOAT, POSITIVE_INT


def register(sub) -> None:
    p = sub.add_parser("verify", help="numerical checks against transformers",
                       description="Numerical checks of Megatron Hy3 against transformers' HYV3ForCausalLM.")
    v = p.add_subparsers(dest="check", metavar="CHECK", required=True)
    q = v.add_parser("parity", help="Megatron logits vs transformers on CPU under a TP/PP/VPP/EP/ETP layout",
                     description="Load the checkpoint into megatron-core's GPTModel under the given layout (real "
                                 "processes over gloo on this CPU), run random tokens through it and through "
                                 "transformers' HYV3ForCausalLM plus the reference MTP forward, and print the "
                                 "largest absolute and relative error of the logits and of each MTP depth's "
                                 "logits. Relative error is max|megatron - reference| / max|reference|. "
                                 "It also counts the tokens Megatron's router sent to each routed expert and "
                                 "says how many experts received none (their weights were not compared). "
                                 "Exit 1 above the tolerance. Meant for small or tiny checkpoints.")
    q.add_argument("hf_dir", metavar="HF_DIR", help="HF Hy3 checkpoint (inner or outer layout)")
    q.add_argument("--tp", type=POSITIVE_INT, default=1, help="tensor parallel size (default 1)")
    q.add_argument("--pp", type=POSITIVE_INT, default=1, help="pipeline parallel size (default 1)")
    q.add_argument("--vpp", type=POSITIVE_INT, default=None,
                   help="virtual pipeline stages per pipeline rank (interleaved schedule; needs --pp 2 or more; "
                        "PP x VPP must divide the decoder layers; default: none)")
    q.add_argument("--ep", type=POSITIVE_INT, default=1, help="expert parallel size (default 1)")
    q.add_argument("--etp", type=POSITIVE_INT, default=None, help="expert tensor parallel size (default: same as --tp)")
    q.add_argument("--mcore", metavar="DIR", default=None,
                   help="load the Megatron side from this torch_dist checkpoint (through megatron-core's "
                        "dist_checkpointing.load) instead of from HF_DIR; HF_DIR stays the reference")
    q.add_argument("--adapter", metavar="DIR", default=None,
                   help="with --base: load --base into Megatron and add this LoRA adapter's delta in Megatron's layout; "
                        "HF_DIR (e.g. the output of `hy3 lora merge`) is the reference")
    q.add_argument("--base", metavar="DIR", default=None, help="base HF checkpoint for --adapter")
    q.add_argument("--tokens", type=POSITIVE_INT, default=16, help="sequence length (default 16)")
    q.add_argument("--batch", type=POSITIVE_INT, default=2, help="sequences (default 2)")
    q.add_argument("--seed", type=int, default=0, help="seed for the random tokens (default 0)")
    q.add_argument("--tolerance", type=POSITIVE_FLOAT, default=1e-5, help="largest accepted relative error (default 1e-5)")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=run_parity)


def run_parity(args) -> int:
    from ..errors import Hy3Error
    from ..megatron.parity import run_parity as run, verify_parity

    if (args.adapter is None) != (args.base is None):
        raise Hy3Error("--adapter and --base go together")
    if args.adapter and args.mcore:
        raise Hy3Error("--mcore and --adapter cannot be combined")
    if args.adapter:
        res = run(args.hf_dir, [("hf+lora", (args.base, args.adapter))], tp=args.tp, pp=args.pp, ep=args.ep,
                  etp=args.etp, tokens=args.tokens, batch=args.batch, seed=args.seed, tolerance=args.tolerance,
                  vpp=args.vpp)[0][0]
    else:
        res = verify_parity(args.hf_dir, tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, tokens=args.tokens,
                            batch=args.batch, seed=args.seed, mcore_dir=args.mcore, tolerance=args.tolerance,
                            vpp=args.vpp)
    if args.json:
        print(json.dumps(res.to_json()))
    else:
        source = "torch_dist" if args.mcore else "base + LoRA delta" if args.adapter else "HF"
        print(f"parity {res.layout}: Megatron ({source} weights) vs transformers, "
              f"{res.tokens} tokens")
        print(f"  logits       max abs {res.max_abs_err:.3e}  max rel {res.max_rel_err:.3e}")
        for k, a in enumerate(res.mtp_max_abs_err):
            print(f"  MTP depth {k + 1}  max abs {a:.3e}")
        if res.mtp_max_rel_err is not None:
            print(f"  MTP          max rel {res.mtp_max_rel_err:.3e}")
        pairs = sum(len(c) for c in res.expert_tokens.values())
        if res.experts_without_tokens:
            print(f"  experts      {res.experts_without_tokens} of {pairs} (layer, expert) pairs received no tokens: "
                  "their weights were not compared; use more --tokens or another --seed")
        elif pairs:
            print(f"  experts      every one of {pairs} (layer, expert) pairs received tokens")
        print(f"  {'PASSED' if res.passed else 'FAILED'} (tolerance {res.tolerance:g})")
    return 0 if res.passed else 1
