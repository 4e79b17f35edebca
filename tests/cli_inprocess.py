"""`hy3` run inside the test process: much cheaper than a fresh interpreter for commands that fail early.

An exception that escapes `main` fails the test, as a traceback in a user's terminal would."""

from __future__ import annotations

import subprocess

from megatron_hy.cli import main


def hy3(capsys, *args) -> subprocess.CompletedProcess:
    """`hy3 ARGS` in this process, its exit code and output as run_cli would give them."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own error
        rc = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def assert_flag_error(proc: subprocess.CompletedProcess, flag: str, expected: str) -> None:
    """argparse's refusal of a flag value: exit 2, one `error:` line naming the flag and what it expects."""
    assert proc.returncode == 2, proc
    lines = [ln for ln in proc.stderr.splitlines() if ": error: " in ln]
    assert len(lines) == 1 and f"argument {flag}: expected {expected}" in lines[0], proc.stderr
