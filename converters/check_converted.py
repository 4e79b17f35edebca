#!/usr/bin/env python3
"""Drop-in for Tencent's `check_converted.py`: the same arguments, running `hy3 check`.

    python converters/check_converted.py DIR [--spot-check 3] [--json]

Checks every expected tensor (dense, MoE and MTP layers) against config.json, shapes, dtypes, index
consistency, and NaN/Inf in N spot-checked shards. Works on either layout. Exit 0 only when clean.
Run it with the Python that has megatron-hy installed (`make setup`: .venv/bin/python; the Docker image).
"""

import sys

try:
    from megatron_hy.scripts import check_converted as main
    from megatron_hy.scripts import check_converted_parser as build_parser  # noqa: F401 (importers use it)
except ModuleNotFoundError:
    sys.exit("megatron-hy is not installed in this Python: run `make setup`, then use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(main())
