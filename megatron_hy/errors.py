"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class Hy3Error(Exception):
    """Bad input or environment that the user can fix. The message says where and what was expected."""


class Interrupted(Hy3Error):
    """Ctrl-C (SIGINT) during work. The message says what was kept; the CLI exits 130, as for any SIGINT."""


def fail(msg: str) -> "None":
    raise Hy3Error(msg)
