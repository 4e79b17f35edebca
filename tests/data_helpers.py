"""Shared helpers for the data tests: the stand-in tokenizer and ms-swift templates, built once
per test process, and small row builders. The expected strings here are written from Hy3's
documented chat rules, not produced by the code under test."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from megatron_hy.data.tokens import PREVIEW, RELEASE  # noqa: F401 (re-exported to the tests)

R = RELEASE
PLUGIN = Path(__file__).resolve().parent.parent / "megatron_hy" / "swift" / "templates.py"


@lru_cache(maxsize=None)
def model_dir(variant: str = "release") -> Path:
    """Stand-in tokenizer + minimal config.json (what ms-swift needs to build a processor)."""
    from megatron_hy.data.tokenizer import write_standin_model_dir

    root = Path(tempfile.mkdtemp(prefix=f"hy3-standin-{variant}-"))
    atexit.register(shutil.rmtree, root, True)
    return write_standin_model_dir(root / "model", variant)


@lru_cache(maxsize=None)
def tokenizer(variant: str = "release"):
    from megatron_hy.data.encode import load_tokenizer

    return load_tokenizer(model_dir(variant))


@lru_cache(maxsize=None)
def processor(variant: str = "release"):
    from swift.model import get_processor

    return get_processor(str(model_dir(variant)), model_type="hy_v3", download_model=False)


def swift_template(template_type: str, variant: str = "release", loss_scale: str = "default", **kw):
    """ms-swift's own template object (train mode) for the stand-in tokenizer."""
    from swift.template import get_template

    if template_type in ("hy3", "hy3_preview"):
        load_plugin()
    tpl = get_template(processor(variant), template_type=template_type, loss_scale=loss_scale, **kw)
    tpl.set_mode("train")
    return tpl


def load_plugin():
    """Import the plugin exactly as `--custom_register_path` does."""
    from swift.utils import import_external_file

    return import_external_file(str(PLUGIN))


def encoder(variant: str = "release", **kw):
    from megatron_hy.data.encode import Encoder

    return Encoder(tokenizer(variant), **kw)


def conv(row: dict):
    from megatron_hy.data.rows import parse_row

    c, problems = parse_row(row)
    assert c is not None, [p.message for p in problems]
    return c


def ids(text: str, variant: str = "release") -> list[int]:
    """The tokenizer's own encoding of a whole rendered text."""
    return tokenizer(variant)(text, add_special_tokens=False)["input_ids"]


def labeled_runs(input_ids: list[int], labels: list[int], variant: str = "release") -> list[str]:
    """The decoded text of each contiguous run of tokens in the loss."""
    runs, cur = [], []
    for t, lab in zip(input_ids, labels):
        if lab != -100:
            assert lab == t, "a label must be the token at its position"
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer(variant).decode(r, skip_special_tokens=False) for r in runs]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return path


def header(effort: str = "no_think", system: str = "", ts=R) -> str:
    return f"{ts.bos}{system}{ts.reasoning_mode}reasoning_effort:{effort}"


def reply(content: str, reasoning: str = "", ts=R) -> str:
    """An assistant turn after `<｜hy_Assistant｜>`: the span that is in the loss."""
    return f"{ts.think}{reasoning}{ts.think_end}{content}{ts.eos}"


def turn(user: str, content: str, reasoning: str = "", ts=R) -> str:
    return f"{ts.user}{user}{ts.assistant}" + reply(content, reasoning, ts)


SYS = "You are a helpful assistant.\nThe current time is 2026-01-01 13:26:12 Thursday"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
