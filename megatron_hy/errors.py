"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class Hy3Error(Exception):
    """Bad input or environment that the user can fix. The message says where and what was expected."""


def fail(msg: str) -> "None":
    raise Hy3Error(msg)
