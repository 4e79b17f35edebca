"""Turn Hy3 rows into training examples: `input_ids` and `labels` (-100 where there is no loss).

Two backends give the same tokens:
- `native`: our renderer (render.py); the text pieces of a batch of rows are tokenized together
  (fasttok.py);
- `jinja`: the tokenizer's own chat template through `apply_chat_template(..., is_training=True)`;
  the labels are the spans after each `<｜hy_Assistant｜>` up to and including its eos.

Loss modes (FastChat train_yuan2's three): `all` assistant turns in one example (default),
`last` the final assistant turn only (as ms-swift's `--loss_scale last_round`), `per-turn` one
example per assistant turn, each rendered from the conversation cut after that turn (so each
turn's reasoning is in its think block).
An assistant message's `loss` field (true/false) overrides the mode for that turn.
"""

from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Hy3Error
from .fasttok import PieceTokenizer
from .render import render, to_messages
from .rows import Conversation
from .tokens import detect_variant, get_variant, TokenSet

LOSS_MODES = ("all", "last", "per-turn")
BACKENDS = ("native", "jinja")
IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    turns: list[int] = field(default_factory=list)  # the assistant turns in the loss

    def __len__(self) -> int:
        return len(self.input_ids)

    def loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def load_tokenizer(path: str | Path):
    """The tokenizer in `path`; the generic fast class when that is what the directory asks for
    (importing AutoTokenizer costs seconds), AutoTokenizer otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise Hy3Error(f"{path}: no such tokenizer directory")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise Hy3Error(f"{path}: no tokenizer files (tokenizer.json or tokenizer_config.json) in this directory")
    cls = None
    try:
        cls = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError):
        pass
    try:
        if (path / "tokenizer.json").exists() and cls in (None, "PreTrainedTokenizerFast", "TokenizersBackend"):
            from transformers import PreTrainedTokenizerFast as Loader
        else:
            from transformers import AutoTokenizer as Loader
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        return Loader.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for a broken tokenizer directory
        raise Hy3Error(f"{path}: cannot load the tokenizer: {e}") from None


def turns_in_loss(conv: Conversation, mode: str) -> list[list[int]]:
    """For each example the row gives, the assistant turns whose tokens are in the loss."""
    turns = conv.assistant_turns()
    forced = {i for i in turns if conv.turns[i].loss is True}
    allowed = [i for i in turns if conv.turns[i].loss is not False]
    if mode == "all":
        return [allowed] if allowed else []
    if mode == "last":
        picked = sorted(forced | ({turns[-1]} if conv.turns[turns[-1]].loss is not False else set()))
        return [picked] if picked else []
    return [[i] for i in allowed]


class Encoder:
    def __init__(self, tokenizer, variant: str | None = None, loss_mode: str = "all", backend: str = "native",
                 preserved_thinking: bool | None = None, where: str = "tokenizer"):
        if loss_mode not in LOSS_MODES:
            raise Hy3Error(f"--loss-mode must be one of {', '.join(LOSS_MODES)}, not {loss_mode!r}")
        if backend not in BACKENDS:
            raise Hy3Error(f"--backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.tokenizer = tokenizer
        self.ts: TokenSet = get_variant(variant) if variant else detect_variant(tokenizer, where)
        self.loss_mode, self.backend, self.preserved = loss_mode, backend, preserved_thinking
        vocab = tokenizer.get_vocab()
        missing = [t for t in self.ts.all() if t not in vocab]
        if missing:
            raise Hy3Error(f"{where}: the tokenizer lacks Hy3 {self.ts.name} control tokens: {', '.join(missing[:4])}"
                           + (f" and {len(missing) - 4} more" if len(missing) > 4 else ""))
        self.special = {t: vocab[t] for t in self.ts.all()}
        self._special_ids = {t: [i] for t, i in self.special.items()}
        self.assistant_id, self.eos_id = self.special[self.ts.assistant], self.special[self.ts.eos]
        self._batch = PieceTokenizer(tokenizer).encode
        if backend == "jinja" and not getattr(tokenizer, "chat_template", None):
            raise Hy3Error(f"{where}: the tokenizer has no chat template, so the jinja backend cannot be used")

    # -- native ---------------------------------------------------------------------------------

    def encode_many(self, convs: list[Conversation]) -> list[list[Example]]:
        """Examples for each conversation, in order."""
        if self.backend == "jinja":
            return [self._jinja(c) for c in convs]
        with _no_gc():
            return self._native(convs)

    def _native(self, convs: list[Conversation]) -> list[list[Example]]:
        jobs = []  # (row, pieces, turns in loss)
        for r, conv in enumerate(convs):
            for turns in turns_in_loss(conv, self.loss_mode):
                cut = conv if self.loss_mode != "per-turn" else _cut(conv, turns[0])
                jobs.append((r, render(cut, self.ts, self.preserved), turns))
        order = list({p.text for _, pieces, _ in jobs for p in pieces if not p.special})
        ids = dict(zip(order, self._batch(order)))
        out: list[list[Example]] = [[] for _ in convs]
        special = self._special_ids
        for r, pieces, turns in jobs:
            want = set(turns)
            input_ids, labels = [], []
            for p in pieces:
                tok = special[p.text] if p.special else ids[p.text]
                input_ids += tok
                labels += tok if p.turn in want else [IGNORE] * len(tok)
            out[r].append(Example(input_ids, labels, sorted(want)))
        return out

    def encode(self, conv: Conversation) -> list[Example]:
        return self.encode_many([conv])[0]

    # -- jinja ----------------------------------------------------------------------------------

    def render_text(self, conv: Conversation) -> str:
        kwargs = {"reasoning_effort": conv.effort, "is_training": True}
        if self.preserved is not None:
            kwargs["preserved_thinking"] = self.preserved
        try:
            return self.tokenizer.apply_chat_template(to_messages(conv), tools=conv.tools, tokenize=False, **kwargs)
        except Exception as e:  # a template's raise_exception or a rendering bug
            raise Hy3Error(f"the tokenizer's chat template failed: {e}") from None

    def _jinja(self, conv: Conversation) -> list[Example]:
        out = []
        for turns in turns_in_loss(conv, self.loss_mode):
            cut = conv if self.loss_mode != "per-turn" else _cut(conv, turns[0])
            ids = self._batch([self.render_text(cut)])[0]
            spans = self.assistant_spans(ids)
            assistant = cut.assistant_turns()
            if len(spans) != len(assistant):
                raise Hy3Error(f"the chat template rendered {len(spans)} assistant turns for {len(assistant)} "
                               "assistant messages")
            labels = [IGNORE] * len(ids)
            for (a, b), turn in zip(spans, assistant):
                if turn in turns:
                    labels[a:b] = ids[a:b]
            out.append(Example(ids, labels, sorted(turns)))
        return out

    def assistant_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """[start, end) of each assistant turn: after `<｜hy_Assistant｜>` through its eos."""
        spans, start = [], None
        for i, t in enumerate(ids):
            if t == self.assistant_id:
                if start is not None:
                    spans.append((start, i))
                start = i + 1
            elif t == self.eos_id and start is not None:
                spans.append((start, i + 1))
                start = None
        if start is not None:
            spans.append((start, len(ids)))
        return spans


@contextmanager
def _no_gc():
    """The encoder allocates millions of int lists and no cycles; the cyclic collector would scan
    them over and over (a third of the time on large batches) for nothing."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _cut(conv: Conversation, turn: int) -> Conversation:
    return Conversation(conv.effort, conv.system, conv.tools, conv.turns[:turn + 1])
