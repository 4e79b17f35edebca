"""Demo step: validate and encode the bundled Hy3 dataset with the stand-in tokenizer."""

from __future__ import annotations

from pathlib import Path

from ..errors import Hy3Error
from .check_template import check_template
from .encode import Encoder, load_tokenizer
from .output import encode_file
from .tokenizer import write_standin_tokenizer
from .validate import Report, rows, validate_files

DEMO_DATA = Path(__file__).resolve().parent.parent / "assets" / "demo_data.jsonl"


def step_data(ctx: dict) -> str:
    work = Path(ctx["work"]) / "data"
    rep = validate_files([DEMO_DATA])
    if not rep.ok:
        raise Hy3Error(f"bundled dataset is invalid: {rep.errors[0]}")
    tok = load_tokenizer(write_standin_tokenizer(work / "tokenizer"))
    enc = Encoder(tok, where="stand-in tokenizer")
    s = encode_file(DEMO_DATA, work / "encoded.jsonl", enc, max_length=4096, quiet=True)
    if s.skipped or s.examples != rep.rows or not s.loss_tokens:
        raise Hy3Error(f"encoding the bundled dataset: {s.text()}")
    res = check_template(DEMO_DATA, enc, Encoder(tok, backend="jinja", where="stand-in tokenizer"))
    if res.disagreements:
        raise Hy3Error(f"native renderer and chat template disagree: {res.disagreements[0]}")
    efforts = sorted({c.effort for _, c in _rows(DEMO_DATA)})
    return (f"{rep.rows} rows valid ({', '.join(efforts)} effort); encoded to {s.tokens} tokens, {s.loss_tokens} "
            f"in the loss; native renderer == chat template on every row")


def _rows(path: Path):
    return list(rows(path, Report()))
