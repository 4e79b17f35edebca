"""`hy3 config`: what a Hy3 checkpoint's config means, in each system's terms."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("config", help="show a checkpoint's config as Megatron / megatron sft / HF arguments",
                       description="Read config.json (Tencent's or transformers' spelling) and print it as: a "
                                   "summary of the derived model facts (summary), Megatron-LM flags (megatron), "
                                   "the `megatron sft` flags for Hy3: the ms-swift plugin (--custom_register_path, "
                                   "absolute path) and the MoE training settings (swift), "
                                   "megatron-core TransformerConfig arguments as JSON (json), or the config in "
                                   "transformers' or Tencent's spelling (transformers, tencent).")
    p.add_argument("dir", metavar="DIR", help="checkpoint directory or config.json")
    p.add_argument("--to", choices=["summary", "megatron", "swift", "json", "transformers", "tencent"],
                   default="summary", help="output form (default summary)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..config import load_config

    cfg = load_config(args.dir)
    if args.to == "summary":
        for k, v in cfg.summary().items():
            print(f"{k:<26} {v}")
    elif args.to == "megatron":
        from ..megatron.config import megatron_lm_flags

        print(" \\\n".join(megatron_lm_flags(cfg)))
    elif args.to == "swift":
        import shlex

        from ..megatron.config import swift_flags
        from ..plugins import swift_plugin_path

        print(" \\\n".join([f"--custom_register_path {shlex.quote(str(swift_plugin_path()))}"] + swift_flags(cfg)))
    elif args.to == "json":
        from ..megatron.config import gpt_model_kwargs, transformer_config_kwargs

        kw = transformer_config_kwargs(cfg)
        kw["activation_func"] = kw["activation_func"].__name__
        print(json.dumps({"transformer_config": kw, "gpt_model": gpt_model_kwargs(cfg)}, indent=2))
    elif args.to == "transformers":
        print(json.dumps(cfg.to_transformers(), indent=2))
    else:
        print(json.dumps(cfg.to_tencent(), indent=2))
    return 0
