"""Stream rows out of JSONL or JSON files of any size, each with the line it starts on.

`.jsonl`: one value per line; a bad line is reported and reading goes on.
`.json`: a top-level array is read element by element without loading the file; anything else
is read as a sequence of JSON values (one pretty-printed object, or JSONL saved as .json). A
syntax error there ends the file, since nothing after it can be trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import Hy3Error

CHUNK = 1 << 20
_WS = " \t\r\n"


@dataclass
class Record:
    line: int
    value: Any = None
    error: str | None = None  # set when the text at `line` is not valid JSON


def open_text(path: Path):
    path = Path(path)
    if not path.is_file():
        raise Hy3Error(f"{path}: no such file")
    return open(path, encoding="utf-8", errors="strict", newline="")


def read_records(path: str | Path, on_pos=None) -> Iterator[Record]:
    """on_pos(bytes read so far), now and then: for progress against the file's size."""
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, on_pos)
    else:
        yield from _read_json(path, on_pos)


def _read_jsonl(path: Path, on_pos=None) -> Iterator[Record]:
    with open_text(path) as f:
        n = 0
        while True:
            if on_pos and n % 1024 == 0:
                on_pos(f.buffer.tell())
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                yield Record(n + 1, error=f"not UTF-8 text ({e.reason} at byte {e.start} of the line)")
                return
            if not line:
                return
            n += 1
            if not line.strip():
                continue
            try:
                yield Record(n, json.loads(line))
            except json.JSONDecodeError as e:
                yield Record(n, error=f"invalid JSON: {e.msg} (column {e.colno})")


class _Stream:
    """A growing text buffer over a file, with the line number of its first character."""

    def __init__(self, f, on_pos=None):
        self.f, self.buf, self.pos, self.line, self.eof = f, "", 0, 1, False
        self.want = CHUNK
        self.on_pos = on_pos

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.f.read(self.want)
        if self.on_pos:
            self.on_pos(self.f.buffer.tell())
        self.want = min(self.want * 2, 1 << 28)  # grow so a huge element costs few re-parses
        if not chunk:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def skip(self, chars: str) -> str | None:
        """Skip `chars`; return the next character (None at end of file)."""
        while True:
            end = self.pos
            while end < len(self.buf) and self.buf[end] in chars:
                end += 1
            self.advance(end)
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return None

    def value(self, decoder: json.JSONDecoder) -> Record:
        start = self.line
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
                # a number or literal cut by the chunk boundary parses short: make sure it ended
                if end == len(self.buf) and not self.eof and self.more():
                    continue
                self.advance(end)
                return Record(start, value)
            except json.JSONDecodeError as e:
                if self.more():
                    continue
                line = start + self.buf.count("\n", self.pos, e.pos)
                return Record(line, error=f"invalid JSON: {e.msg}")


def _read_json(path: Path, on_pos=None) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    with open_text(path) as f:
        s = _Stream(f, on_pos)
        try:
            first = s.skip(_WS)
            if first is None:
                return
            if first != "[":
                while s.skip(_WS) is not None:
                    rec = s.value(decoder)
                    yield rec
                    if rec.error:
                        return
                return
            s.advance(s.pos + 1)
            state = "open"  # open: after '['; value: after a row; comma: after ','
            while True:
                c = s.skip(_WS)
                if c is None:
                    yield Record(s.line, error="invalid JSON: the array is not closed with ']'")
                    return
                if c == "]":
                    if state == "comma":
                        yield Record(s.line, error="invalid JSON: ',' before ']' (trailing comma)")
                    return
                if state == "value":
                    if c != ",":
                        yield Record(s.line, error=f"invalid JSON: expected ',' or ']' between rows, found {c!r}")
                        return
                    s.advance(s.pos + 1)
                    state = "comma"
                    continue
                rec = s.value(decoder)
                yield rec
                if rec.error:
                    return
                state = "value"
        except UnicodeDecodeError as e:
            yield Record(s.line, error=f"not UTF-8 text ({e.reason})")
