"""Checkpoint conversions: one module per direction, and the on-disk formats they read and write."""
