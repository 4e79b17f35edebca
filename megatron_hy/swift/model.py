"""The model ms-swift (through mcore-bridge) must build for a Hy3 checkpoint, as mcore-bridge
`ModelConfig` fields, rendered from the field table (settings.py); and the check that a recipe does not
ask for something else. Pure Python: the planner uses it on machines without mcore-bridge, the ms-swift
plugin (swift/plugin/ms_swift.py -> swift/bridge.py) uses it inside `megatron sft/export`.
"""

from __future__ import annotations

import ast
import json

from .. import settings
from ..config import Hy3Config
from ..megatron.config import check_supported

# The one model field a run may set lower than the checkpoint's (0: train without the MTP layers).
MTP = settings.row("num_mtp_layers").key("bridge")
# Fields that fix the shape of the model: they must equal the checkpoint's config.
ARCH_FIELDS = tuple(s.key("bridge") for s in settings.rows("bridge") if not s.training and s.key("bridge") != MTP)
# Hy3's SFT behaviour: applied where the run leaves mcore-bridge's defaults (aux loss, bias updates).
TRAINING_DEFAULTS = {s.key("bridge"): s.rendered("bridge") for s in settings.rows("bridge") if s.training}


def model_fields(cfg: Hy3Config) -> dict:
    """mcore-bridge ModelConfig fields describing this checkpoint (ARCH_FIELDS, plus mtp_num_layers)."""
    check_supported(cfg)
    return {s.key("bridge"): s.rendered("bridge", cfg) for s in settings.rows("bridge") if not s.training}


def layer_freq(value, num_layers: int):
    """A moe_layer_freq in any of Megatron's spellings (int N, "N", a list, a list expression such as
    "[0]*1+[1]*79") as a list of 0/1, or None when it cannot be read."""
    if isinstance(value, str):
        try:
            value = _list_expression(ast.parse(value.strip(), mode="eval").body)
        except (SyntaxError, ValueError, RecursionError):
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [1 if i % value == 0 else 0 for i in range(num_layers)] if value > 0 else None
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return None


MAX_EXPRESSION = 1 << 20   # the largest number or list a moe_layer_freq expression may make (a recipe is no program)


def _list_expression(node: ast.expr):
    """The value of an expression of integers, lists of them, + and *: what Megatron's moe_layer_freq admits,
    evaluated without eval, so that a recipe's typo cannot run code or fill memory."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        value = node.value
    elif isinstance(node, (ast.List, ast.Tuple)):
        value = [_list_expression(e) for e in node.elts]
        if any(not isinstance(v, int) for v in value):
            raise ValueError("a list of lists")
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        a, b = _list_expression(node.left), _list_expression(node.right)
        if isinstance(node.op, ast.Add):
            if isinstance(a, list) != isinstance(b, list):
                raise ValueError("a number added to a list")
            value = a + b
        else:
            if isinstance(a, list) and isinstance(b, list):
                raise ValueError("a list times a list")
            n, seq = (b, a) if isinstance(a, list) else (a, b)
            if isinstance(seq, list):
                value = seq * n if len(seq) * n <= MAX_EXPRESSION else None
            else:
                value = n * seq
    else:
        raise ValueError("not an expression of integers and lists")
    if value is None or (len(value) if isinstance(value, list) else abs(value)) > MAX_EXPRESSION:
        raise ValueError("too large")
    return value


def same_value(field: str, a, b, num_layers: int) -> bool:
    if field == "moe_layer_freq":
        return layer_freq(a, num_layers) == layer_freq(b, num_layers)
    if isinstance(a, float) or isinstance(b, float):
        try:
            return a is not None and b is not None and abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def requested(args: dict) -> dict:
    """The model fields a `megatron sft/export` argument set asks for: flags named like ModelConfig
    fields and the keys of megatron_extra_kwargs (which ms-swift applies last)."""
    out = {k: v for k, v in args.items() if k in ARCH_FIELDS or k == MTP}
    extra = args.get("megatron_extra_kwargs") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except json.JSONDecodeError:
            extra = {}
    if isinstance(extra, dict):
        out.update({k: v for k, v in extra.items() if k in ARCH_FIELDS or k == MTP})
    return out


def conflicts(cfg: Hy3Config, asked: dict) -> list[str]:
    """One line per asked model field that would build something other than this checkpoint."""
    want = model_fields(cfg)
    out = []
    for k, v in asked.items():
        if k == MTP:
            if v is not None and not (isinstance(v, int) and 0 <= v <= cfg.num_mtp_layers):
                out.append(f"{MTP} {v!r}: the checkpoint has {cfg.num_mtp_layers} MTP layer(s) "
                           f"(use 0 to train without MTP, or up to {cfg.num_mtp_layers})")
            continue
        if not same_value(k, v, want[k], cfg.num_layers):
            out.append(f"{k} {v!r}: the checkpoint's config.json says {want[k]!r}")
    return out


def plugin_paths(args: dict) -> list[str]:
    """The plugin files a `megatron` argument set imports (custom_register_path and external_plugins)."""
    out = []
    for key in ("custom_register_path", "external_plugins"):
        v = args.get(key)
        out += [str(x) for x in (v if isinstance(v, (list, tuple)) else [v] if v else [])]
    return out
