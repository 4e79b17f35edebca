"""LoRA for Hy3: merge adapters into HF weights, export them as PEFT, write random ones for tests (the adapter
formats are read by `formats/adapters.py`)."""
