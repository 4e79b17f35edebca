"""megatron-hy: train Tencent Hy3 with Megatron-Core and ms-swift."""

__version__ = "0.1.0"
