#!/usr/bin/env python3
"""Drop-in for Tencent's `convert_ckpt_to_outer.py`: the same flags, running `hy3 convert inner-to-outer`.

    python converters/convert_ckpt_to_outer.py --input_dir IN --output_dir OUT [--workers 8]

Scripts written for the reference tool keep working; the conversion is this package's streaming one
(byte-range copies, bounded memory, output renamed into place when complete, resumable).
Run it with the Python that has megatron-hy installed (`make setup`: .venv/bin/python; the Docker image).
"""

import sys

try:
    from megatron_hy.scripts import convert_ckpt_to_outer as main
    from megatron_hy.scripts import convert_ckpt_to_outer_parser as build_parser  # noqa: F401 (importers use it)
except ModuleNotFoundError:
    sys.exit("megatron-hy is not installed in this Python: run `make setup`, then use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(main())
