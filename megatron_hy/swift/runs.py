"""ms-swift's run directories, as `megatron sft --output_dir OUT` leaves them (ms-swift 4.6):

    OUT/v0-20260101-120000/               one run: v<number>-<date>-<time>, a new one per start
        args.json
        checkpoint-500/                   one save: a torch_dist checkpoint (latest_checkpointed_iteration.txt,
        checkpoint-1000/                  iter_*), HF safetensors (save_safetensors: model*.safetensors, or an
                                          adapter_model.safetensors for LoRA), or both
        checkpoint-1000-merged/           LoRA with merge_lora: the merged model (not a checkpoint-N)

Commands that read a checkpoint accept OUT, a run, or a checkpoint itself: in a run the newest checkpoint-N is
taken (or --checkpoint N), in OUT the newest run that holds checkpoints. What a checkpoint directory holds
is told apart by its files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import Hy3Error

RUN = re.compile(r"^v(\d+)-(\d{8}-\d{6})$")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRACKER = "latest_checkpointed_iteration.txt"


@dataclass
class Picked:
    path: Path
    note: str | None = None   # which checkpoint was taken and why, for the user


def checkpoints(run: Path) -> dict[int, Path]:
    """checkpoint-N directories of a run, by N."""
    out = {}
    for p in run.iterdir() if run.is_dir() else ():
        m = CHECKPOINT.match(p.name)
        if m and p.is_dir():
            out[int(m.group(1))] = p
    return out


def runs(root: Path) -> list[Path]:
    """vX-YYYYMMDD-HHMMSS directories under root, oldest first."""
    found = []
    for p in root.iterdir() if root.is_dir() else ():
        m = RUN.match(p.name)
        if m and p.is_dir():
            found.append(((int(m.group(1)), m.group(2)), p))
    return [p for _, p in sorted(found)]


def pick_checkpoint(path: str | Path, number: int | None = None, flag: str = "--checkpoint") -> Picked:
    """The checkpoint directory `path` means: itself, the newest checkpoint-N of a run (or checkpoint-`number`),
    or that of the newest run under an ms-swift output directory."""
    root = Path(path)
    if not root.is_dir():
        raise Hy3Error(f"{root}: not a directory")
    found = checkpoints(root)
    if found:
        return _pick(root, found, number, flag)
    all_runs = runs(root)
    with_ckpt = [r for r in all_runs if checkpoints(r)]
    if with_ckpt:
        if number is not None:
            having = [r for r in with_ckpt if number in checkpoints(r)]
            if not having:
                raise Hy3Error(f"{flag} {number}: no run under {root} holds checkpoint-{number}; "
                               + "; ".join(f"{r.name}: {_names(checkpoints(r))}" for r in with_ckpt))
            with_ckpt = having
        run = with_ckpt[-1]
        picked = _pick(run, checkpoints(run), number, flag)
        if len(all_runs) > 1:
            picked.note += f"; the newest of {len(all_runs)} runs in {root}"
        return picked
    if all_runs:
        raise Hy3Error(f"{root}: ms-swift output directory whose runs ({', '.join(r.name for r in all_runs)}) hold "
                       f"no checkpoint-N yet")
    if RUN.match(root.name) and (root / "args.json").exists():
        raise Hy3Error(f"{root}: an ms-swift run directory with no checkpoint-N yet (ms-swift saves one every "
                       f"save_steps)")
    if number is not None:
        raise Hy3Error(f"{flag} {number}: {root} is not an ms-swift run directory (no checkpoint-N in it)")
    return Picked(root)


def _pick(run: Path, found: dict[int, Path], number: int | None, flag: str) -> Picked:
    if number is not None:
        if number not in found:
            raise Hy3Error(f"{flag} {number}: {run} has no checkpoint-{number}; it has {_names(found)}")
        return Picked(found[number], f"using {found[number]} ({flag} {number})")
    newest = max(found)
    return Picked(found[newest], f"using {found[newest]}: the newest of {len(found)} checkpoint(s) in {run} "
                                 f"({_names(found)}; {flag} N picks another)")


def _names(found: dict[int, Path]) -> str:
    return ", ".join(f"checkpoint-{n}" for n in sorted(found))


def holds_torch_dist(d: Path) -> bool:
    """A Megatron torch_dist checkpoint with tensors: the tracker and an iter_* directory holding .metadata
    (with save_safetensors and no optimizer state, ms-swift writes iter_*/common.pt alone)."""
    if (d / ".metadata").is_file() and (d / "metadata.json").is_file():
        return True   # an iter_* directory itself
    return (d / TRACKER).is_file() and any((it / ".metadata").is_file() for it in d.glob("iter_*"))


def holds_hf_weights(d: Path) -> bool:
    """HF safetensors model weights (not an adapter): config.json and model*.safetensors or their index."""
    return (d / "config.json").is_file() and not (d / "adapter_config.json").is_file() and (
        (d / "model.safetensors.index.json").is_file() or any(d.glob("model*.safetensors")))


def is_swift_checkpoint(d: Path) -> bool:
    """A save of `megatron sft`: named checkpoint-N, or holding the Megatron tracker file."""
    return bool(CHECKPOINT.match(d.name)) or (d / TRACKER).is_file()


def holds_adapter(d: Path) -> bool:
    """A LoRA adapter: PEFT's adapter_config.json, or a torch_dist checkpoint whose args.json (ms-swift copies
    the run's into every checkpoint) says it was saved by a LoRA run, which saves the adapter alone."""
    if (d / "adapter_config.json").is_file():
        return True
    try:
        tuner = json.loads((d / "args.json").read_text()).get("tuner_type")
    except (OSError, ValueError, AttributeError):
        return False
    return tuner not in (None, "full") and holds_torch_dist(d)
