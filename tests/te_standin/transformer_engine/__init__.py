"""CPU stand-in for transformer_engine 2.11.0 (tests only; see ../README.md).

megatron-core reads `transformer_engine.__version__` (megatron/core/utils.py get_te_version) to
pick code paths; 2.11.0 is the version whose source this stand-in is checked against.
"""

__version__ = "2.11.0"

from . import common, pytorch  # noqa: E402,F401
