"""Typed checks of the values users hand us: config files, adapter settings, environment variables, flags.

Each check returns the value or raises Hy3Error naming where it came from, the field, what was expected
and what was found. JSON `true` is not a number here, and `64.5` or `"64"` is not an integer: a config
that says either is wrong, and rounding or parsing it would hide that.
"""

from __future__ import annotations

import argparse
import json
import math
import re

from .errors import Hy3Error

REQUIRED = object()
_INT_TEXT = re.compile(r"[+-]?\d+")


def shown(v) -> str:
    """A found value, as the user would recognise it from the file (with its type where that matters)."""
    if isinstance(v, str):
        return "the string " + json.dumps(v if len(v) <= 60 else v[:57] + "...")
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float)):
        return repr(v)
    kind = {dict: "an object", list: "a list", tuple: "a list"}.get(type(v))
    if kind is None:
        return f"a {type(v).__name__}"
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        return kind
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def bad(where: str | None, name: str, expected: str, found) -> Hy3Error:
    return Hy3Error(f"{where + ': ' if where else ''}{name}: expected {expected}, found {shown(found)}")


def int_range(lo: int | None = None, hi: int | None = None) -> str:
    if lo is not None and hi is not None:
        return f"an integer from {lo} to {hi}"
    if lo is not None:
        return f"an integer >= {lo}"
    if hi is not None:
        return f"an integer <= {hi}"
    return "an integer"


def integer(v, where: str | None, name: str, lo: int | None = None, hi: int | None = None,
            expected: str | None = None) -> int:
    if (isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo)
            or (hi is not None and v > hi)):
        raise bad(where, name, expected or int_range(lo, hi), v)
    return v


def number(v, where: str | None, name: str, positive: bool = False) -> float:
    if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
            or (positive and v <= 0)):
        raise bad(where, name, "a number > 0" if positive else "a finite number", v)
    return float(v)


def _of_kind(test, expected: str):
    def check(v, where: str | None, name: str):
        if not test(v):
            raise bad(where, name, expected, v)
        return v
    return check


boolean = _of_kind(lambda v: isinstance(v, bool), "true or false")
string = _of_kind(lambda v: isinstance(v, str), "a string")
string_list = _of_kind(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
mapping = _of_kind(lambda v: isinstance(v, dict), "an object ({...})")


def choice(v, where: str | None, name: str, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise bad(where, name, "one of " + ", ".join(repr(c) for c in choices), v)
    return v


def get(d: dict, where: str, names, check, default=REQUIRED, **limits):
    """The first of `names` present (and not null) in d, passed through check(value, where, name, **limits);
    `default` when none is, or an error naming the field when there is no default."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for n in names:
        if d.get(n) is not None:
            return check(d[n], where, n, **limits)
    if default is REQUIRED:
        alt = f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
        raise Hy3Error(f"{where}: missing field {names[0]!r}{alt}")
    return default


# --- environment variables ------------------------------------------------------------------------

def env_int(environ: dict, name: str, lo: int | None = None, hi: int | None = None,
            expected: str | None = None) -> int | None:
    """An integer environment variable; None when unset or empty."""
    text = environ.get(name)
    if text is None or not text.strip():
        return None
    if not _INT_TEXT.fullmatch(text.strip()):
        raise bad("environment", name, expected or int_range(lo, hi), text)
    return integer(int(text), "environment", name, lo, hi, expected)


# --- command-line flags (argparse `type=`): a bad value is argparse's one error line, exit 2 --------

def flag_int(lo: int | None = None, hi: int | None = None):
    expected = int_range(lo, hi)

    def parse(text: str) -> int:
        if not _INT_TEXT.fullmatch(text.strip()) or (lo is not None and int(text) < lo) \
                or (hi is not None and int(text) > hi):
            raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")
        return int(text)

    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, found {text!r}")
    return v


_RANGE_TEXT = re.compile(r"(\d+)(?:-(\d+))?")


def index_list(text: str) -> list[int]:
    """`0,2,5-7` -> [0, 2, 5, 6, 7]: comma-separated indices (0-based) and inclusive ranges."""
    out = []
    for part in text.split(","):
        m = _RANGE_TEXT.fullmatch(part.strip())
        if not m:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated layer indices or ranges such as 0,2,5-7, found {text!r}")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise argparse.ArgumentTypeError(f"range {part.strip()} is empty: expected LOW-HIGH with LOW <= HIGH")
        out += range(lo, hi + 1)
    return out


POSITIVE_INT = flag_int(lo=1)
COUNT = flag_int(lo=0)
PORT = flag_int(1, 65535)
POSITIVE_FLOAT = _positive_float
