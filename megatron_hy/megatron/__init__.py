"""Hy3 on Megatron-Core: config mapping, model builder, weight loading, CPU harness, parity."""
