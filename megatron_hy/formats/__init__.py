"""Files on disk, below the operations that use them: safetensors, an HF checkpoint (inspected, read, written),
outputs that appear only when complete, PyTorch DCP, Megatron's checkpoint directory, the manifest, and LoRA
adapters in every format. Nothing here knows Megatron-Core or ms-swift's code."""
