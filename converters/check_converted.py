#!/usr/bin/env python3
"""Drop-in for Tencent's `check_converted.py`: the same arguments, running `hy3 check`.

    python converters/check_converted.py DIR [--spot-check 3] [--json]

Checks every expected tensor (dense, MoE and MTP layers) against config.json, shapes, dtypes, index
consistency, and NaN/Inf in N spot-checked shards. Works on either layout. Exit 0 only when clean.
Run it with the Python that has megatron-hy installed (`make setup`: .venv/bin/python; the Docker image).
"""

import sys

try:
    from megatron_hy.scripts import check_converted as main, check_converted_parser as build_parser
except ModuleNotFoundError:
    sys.exit("check_converted.py: megatron-hy is not installed in this Python (run `make setup`, then .venv/bin/python)")

if __name__ == "__main__":
    sys.exit(main())
