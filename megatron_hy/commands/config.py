"""`hy3 config`: what a Hy3 checkpoint's config means, in each system's terms."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..config import load_config
from ..launch_data import template_for
from ..megatron.config import gpt_model_kwargs, megatron_lm_flags, swift_moe_settings, transformer_config_kwargs
from ..plan.recipe import to_cli
from ..progress import log
from ..swift.plugin import swift_plugin_path
from .common import add_json, add_model_operand, emit, model_operand


def register(sub) -> None:
    p = sub.add_parser("config", help="show a checkpoint's config as Megatron / megatron sft / HF arguments",
                       description="Read config.json (Tencent's or transformers' spelling) and print it as: a "
                                   "summary of the derived model facts (summary), Megatron-LM flags (megatron), "
                                   "the model's flags of a hand-run `megatron sft`, as `hy3 launch` passes them: "
                                   "--model, the plugin's --template (hy3, or hy3_preview for Hy3 preview's "
                                   "tokenizer; ms-swift's own hy_v3 would drop the reasoning), the ms-swift plugin "
                                   "(--custom_register_path, absolute path) and the MoE training settings (swift), "
                                   "megatron-core TransformerConfig arguments as JSON (json), or the config in "
                                   "transformers' or Tencent's spelling (transformers, tencent).")
    add_model_operand(p, "dir", "DIR", "checkpoint directory or config.json")
    p.add_argument("--to", choices=["summary", "megatron", "swift", "json", "transformers", "tencent"],
                   default="summary", help="output form (default summary)")
    add_json(p, "print the chosen form as one JSON object (summary: the facts; megatron, swift: the flags as a "
                "list; the others are JSON already)")
    p.set_defaults(func=run)


def swift_argv(model: str) -> list[str]:
    """The model's flags of a hand-run `megatron sft`: the model directory, the plugin's template, the plugin,
    and Hy3's MoE training settings; what `hy3 launch` passes for the same model (the run's data, layout
    and output directory are the recipe's)."""
    root = Path(model).parent if Path(model).is_file() else Path(model)
    cfg = load_config(model)
    if any((root / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        template = template_for(str(root))
    else:
        template = "hy3"
        log(f"note: {root} has no tokenizer; --template hy3 assumed (hy3_preview for Hy3 preview's tokens)")
    return ["--model", str(root.resolve()), "--template", template,
            "--custom_register_path", str(swift_plugin_path()), *to_cli(swift_moe_settings(cfg))]


def _flag_lines(argv: list[str]) -> str:
    """One flag per line, each ready for a shell."""
    groups: list[list[str]] = []
    for a in argv:
        if a.startswith("--") or not groups:
            groups.append([a])
        else:
            groups[-1].append(a)
    return " \\\n".join(" ".join(shlex.quote(x) for x in g) for g in groups)


def run(args) -> int:
    model = model_operand(args, "dir", "DIR")
    cfg = load_config(model)
    if args.to == "summary":
        emit(args, cfg.summary(), "\n".join(f"{k:<26} {v}" for k, v in cfg.summary().items()))
    elif args.to == "megatron":
        flags = megatron_lm_flags(cfg)
        emit(args, {"flags": [x for f in flags for x in shlex.split(f)]}, " \\\n".join(flags))
    elif args.to == "swift":
        argv = swift_argv(model)
        emit(args, {"flags": argv}, _flag_lines(argv))
    elif args.to == "json":
        kw = transformer_config_kwargs(cfg)
        kw["activation_func"] = kw["activation_func"].__name__
        print(json.dumps({"transformer_config": kw, "gpt_model": gpt_model_kwargs(cfg)}, indent=2))
    elif args.to == "transformers":
        print(json.dumps(cfg.to_transformers(), indent=2))
    else:
        print(json.dumps(cfg.to_tencent(), indent=2))
    return 0
