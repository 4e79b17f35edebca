"""Training data for `hy3 launch`: Hy3 rows are encoded by us, never handed to ms-swift's loader raw.

ms-swift's dataset loader (`--dataset FILE.jsonl`) drops `reasoning_effort` and `reasoning_content`
(docs/data.md). So each local .jsonl/.json file is encoded with `hy3 data encode --swift-dataset`
into the run's directory (`OUTPUT_DIR/hy3-data/<name>/`) and passed as `--cached_dataset`, with the
`hy3` template of the plugin (which trains pre-encoded rows as they are). Node 0 encodes; the other
nodes wait for the finished dataset on the shared filesystem. A dataset made by `hy3 data encode
--swift-dataset` (a directory) is passed as `--cached_dataset` as it is.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data.encode import Encoder, load_tokenizer
from .data.output import encode_file
from .errors import Hy3Error

DATA_DIR = "hy3-data"
ROW_SUFFIXES = (".jsonl", ".json")
LOSS_MODES = {"default": "all", "last_round": "last"}


@dataclass
class Encoding:
    source: Path
    out: Path            # the Arrow dataset directory (OUTPUT_DIR/hy3-data/<name>)
    jsonl: Path          # the encoded rows beside it
    stamp: dict

    @property
    def manifest(self) -> Path:
        return self.out.with_name(self.out.name + ".source.json")

    def done(self) -> bool:
        if not (self.out.is_dir() and self.manifest.is_file()):
            return False
        try:
            recorded = json.loads(self.manifest.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if recorded != self.stamp:
            raise Hy3Error(f"{self.out}: was encoded from other input or settings ({self.manifest}); "
                           f"use another --output-dir or remove {self.out} and {self.manifest}")
        return True


@dataclass
class DataPlan:
    encodings: list = field(default_factory=list)
    cached: list = field(default_factory=list)     # datasets already encoded (directories)
    passthrough: list = field(default_factory=list)  # dataset ids for ms-swift's own loader
    problem: str | None = None                     # why these rows cannot be prepared as given

    def flags(self) -> dict:
        out = {}
        if self.passthrough:
            out["dataset"] = list(self.passthrough)
        cached = [str(e.out) for e in self.encodings] + list(self.cached)
        if cached:
            out["cached_dataset"] = cached
        return out

    def describe(self, model: str) -> list[str]:
        return [f"hy3 data encode --model {model} {e.source} {e.jsonl} --swift-dataset {e.out}"
                + (f" --max-length {e.stamp['max_length']}" if e.stamp.get("max_length") else "")
                + (f" --loss-mode {e.stamp['loss_mode']}" if e.stamp["loss_mode"] != "all" else "")
                for e in self.encodings]


def plan_data(datasets: list[str], output_dir: str | None, recipe_args: dict) -> DataPlan:
    plan = DataPlan()
    rows = []
    for d in datasets or []:
        p = Path(d)
        if p.suffix in ROW_SUFFIXES:
            rows.append(p)
        elif p.is_dir():
            plan.cached.append(str(p.resolve()))
        else:
            plan.passthrough.append(d)
    if not rows:
        return plan
    if not output_dir:
        plan.problem = (f"--dataset {rows[0]}: Hy3 rows are encoded into the run's directory first (ms-swift's "
                        f"loader would drop reasoning_effort and reasoning_content): pass --output-dir, or encode "
                        f"them yourself with `hy3 data encode --model MODEL {rows[0]} enc.jsonl --swift-dataset "
                        f"enc.arrow` and pass --dataset enc.arrow")
        plan.cached = plan.cached + [str(r) for r in rows]   # stands in for the command shown
        return plan
    loss = recipe_args.get("loss_scale", "default")
    if loss not in LOSS_MODES:
        raise Hy3Error(f"loss_scale {loss!r}: the hy3 template trains with loss_scale default or last_round")
    root = Path(output_dir) / DATA_DIR
    names: set = set()
    for src in rows:
        name, n = src.stem, 1
        while name in names:
            n += 1
            name = f"{src.stem}-{n}"
        names.add(name)
        try:
            st = src.stat()
            stamp = {"source": str(src.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:
            stamp = {"source": str(src.resolve()), "bytes": None, "mtime_ns": None}
        stamp.update(loss_mode=LOSS_MODES[loss], max_length=recipe_args.get("max_length"))
        plan.encodings.append(Encoding(src, root / name, root / f"{name}.jsonl", stamp))
    return plan


def template_for(model: str) -> str:
    """The plugin template for this tokenizer: hy3, or hy3_preview for Hy3 preview's tokens."""
    return "hy3_preview" if Encoder(load_tokenizer(model)).ts.name == "preview" else "hy3"


def encode_all(plan: DataPlan, model: str, quiet: bool = False) -> None:
    """Encode what is not encoded yet (node 0)."""
    todo = [e for e in plan.encodings if not e.done()]
    if not todo:
        return
    for e in todo:
        if e.stamp["bytes"] is None:
            raise Hy3Error(f"--dataset {e.source}: not found")
    tok = load_tokenizer(model)
    for e in todo:
        enc = Encoder(tok, loss_mode=e.stamp["loss_mode"], where=model)
        print(f"hy3 launch: encoding {e.source} -> {e.out}", file=sys.stderr, flush=True)
        # a rerun replaces what an interrupted one left (the dataset only when hy3 wrote it: outputs.py)
        s = encode_file(e.source, e.jsonl, enc, max_length=e.stamp["max_length"], swift_dataset=e.out, quiet=quiet,
                        tokenizer=model, overwrite=True)
        print(f"wrote {e.jsonl} and {e.out}: {s.text()}", file=sys.stderr, flush=True)
        e.manifest.write_text(json.dumps(e.stamp, indent=2) + "\n")


def wait_for(plan: DataPlan, timeout: float, poll: float = 5.0) -> None:
    """Other nodes: wait until node 0 has written every dataset."""
    deadline = time.monotonic() + timeout
    told = False
    while not all(e.done() for e in plan.encodings):
        if time.monotonic() > deadline:
            missing = next(e for e in plan.encodings if not e.done())
            raise Hy3Error(f"{missing.out}: not written after {timeout:.0f}s; node 0 encodes it (is it running, and "
                           f"is --output-dir on a filesystem every node shares?)")
        if not told:
            print(f"hy3 launch: waiting for node 0 to encode {len(plan.encodings)} dataset(s) into "
                  f"{plan.encodings[0].out.parent}", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll)
