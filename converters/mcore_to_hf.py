#!/usr/bin/env python3
"""Megatron torch_dist checkpoint -> HF Hy3 safetensors, on CPU: `hy3 convert mcore-to-hf`.

    python converters/mcore_to_hf.py /ckpt/run /models/Hy3-sft --model /models/Hy3 [--format outer]

Reads ours or one megatron-core saved during training (any layout, optimizer state ignored); writes the
inner (published) or outer layout. `--help` lists every flag.
"""

import sys

try:
    from megatron_hy.scripts import hy3_command
except ModuleNotFoundError:
    sys.exit("megatron-hy is not installed in this Python: run `make setup`, then use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(hy3_command(("convert", "mcore-to-hf"), "mcore_to_hf.py"))
