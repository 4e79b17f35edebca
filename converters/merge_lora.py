#!/usr/bin/env python3
"""Merge a LoRA adapter into Hy3's HF weights, on CPU: `hy3 lora merge`.

    python converters/merge_lora.py --model /models/Hy3 --adapter /ckpt/run /models/Hy3-lora

Adapters from ms-swift's Megatron LoRA (torch_dist or safetensors) or PEFT; the output is in the base's
layout and passes `hy3 check`. `--help` lists every flag.
"""

import sys

try:
    from megatron_hy.scripts import hy3_command
except ModuleNotFoundError:
    sys.exit("megatron-hy is not installed in this Python: run `make setup`, then use .venv/bin/python")

if __name__ == "__main__":
    sys.exit(hy3_command(("lora", "merge"), "merge_lora.py"))
