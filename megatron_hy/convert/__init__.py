"""Checkpoint conversions: one module per direction, and which pieces Megatron stores (`mcore_pieces`)."""
