"""`hy3` with a kill installed first, so tests can check what a rerun makes of what a killed run left.

    python tests/hooked_cli.py HOOKS_JSON ARGS...   (run_cli's kill_after_bytes, kill_signal and kill_at)

- after_bytes N: the process sends itself `signal` (KILL, or INT once, as Ctrl-C would) when one byte progress
  of the command passes N bytes: a converter's, which counts the bytes it has written.
- at NAME: SIGKILL at a named point between two steps of a command (KILL_POINTS).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading

from megatron_hy import progress
from megatron_hy.cli import main

# name -> (module, function): the kill comes as the function returns
KILL_POINTS = {"encode:dataset-published": ("megatron_hy.data.output", "write_swift_dataset")}


def kill_after_bytes(limit: int, sig: int) -> None:
    add, lock = progress.Progress.add, threading.Lock()

    def counting(self, n: int) -> None:
        add(self, n)
        if self.unit is not None:
            return
        with lock:
            before = self.__dict__.get("bytes_counted", 0)
            self.bytes_counted = before + n
        if before < limit <= before + n:
            os.kill(os.getpid(), sig)
    progress.Progress.add = counting


def kill_at(name: str) -> None:
    where, attr = KILL_POINTS[name]
    module = importlib.import_module(where)
    step = getattr(module, attr)

    def then_kill(*args, **kwargs):
        result = step(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(module, attr, then_kill)


if __name__ == "__main__":
    hooks = json.loads(sys.argv[1])
    if hooks["after_bytes"] is not None:
        kill_after_bytes(hooks["after_bytes"], getattr(signal, "SIG" + hooks["signal"]))
    if hooks["at"] is not None:
        kill_at(hooks["at"])
    sys.exit(main(sys.argv[2:]))
