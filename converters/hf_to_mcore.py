#!/usr/bin/env python3
"""HF Hy3 checkpoint (either layout) -> Megatron torch_dist checkpoint, on CPU: `hy3 convert hf-to-mcore`.

    python converters/hf_to_mcore.py /models/Hy3 /ckpt/Hy3-mcore [--workers 8] [--dtype bf16]

The output is what `megatron sft --mcore_model` loads, under any TP/PP/EP/ETP. `--help` lists every flag.
"""

import sys

try:
    from megatron_hy.scripts import hy3_command
except ModuleNotFoundError:
    sys.exit("megatron-hy is not installed in this Python: run `make setup`, then use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(hy3_command(("convert", "hf-to-mcore"), "hf_to_mcore.py"))
