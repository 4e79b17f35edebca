"""LoRA for Hy3: read adapters in every format ms-swift and PEFT write, merge them, export them as PEFT."""
