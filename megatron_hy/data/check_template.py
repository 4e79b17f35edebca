"""`hy3 data check-template`: where our native renderer and the model's own chat template disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .encode import Encoder, Example
from .validate import Report, rows


@dataclass
class Disagreement:
    where: str
    example: int
    what: str  # the first difference, with the text around it

    def __str__(self) -> str:
        return f"{self.where}: example {self.example}: {self.what}"


@dataclass
class CheckResult:
    rows: int = 0
    examples: int = 0
    disagreements: list[Disagreement] = field(default_factory=list)
    report: Report = field(default_factory=Report)


def check_template(path: str | Path, native: Encoder, jinja: Encoder) -> CheckResult:
    res = CheckResult()
    for line, conv in rows(path, res.report):
        res.rows += 1
        a, b = native.encode(conv), jinja.encode(conv)
        where = f"{path}:{line}"
        if len(a) != len(b):
            res.disagreements.append(Disagreement(where, 0, f"native gives {len(a)} examples, jinja {len(b)}"))
            continue
        for k, (x, y) in enumerate(zip(a, b)):
            res.examples += 1
            what = compare(x, y, native.tokenizer)
            if what:
                res.disagreements.append(Disagreement(where, k, what))
    return res


def compare(x: Example, y: Example, tokenizer) -> str | None:
    """None when equal, else where the ids (or the labels) first differ, decoded."""
    for name, p, q in (("input_ids", x.input_ids, y.input_ids), ("labels", x.labels, y.labels)):
        if p == q:
            continue
        i = next((i for i, (s, t) in enumerate(zip(p, q)) if s != t), min(len(p), len(q)))
        if name == "labels":
            return (f"labels differ at token {i}: native {'in' if p[i] != -100 else 'out of'} the loss, "
                    f"jinja {'in' if q[i] != -100 else 'out of'}; text there: {_show(x.input_ids, i, tokenizer)}")
        return (f"input_ids differ at token {i} (native {len(p)} tokens, jinja {len(q)}): "
                f"native ...{_show(p, i, tokenizer)} | jinja ...{_show(q, i, tokenizer)}")
    return None


def _show(ids: list[int], i: int, tokenizer) -> str:
    return repr(tokenizer.decode(ids[max(0, i - 8):i + 8], skip_special_tokens=False))
