"""TE 2.11.0 pytorch/tensor/__init__.py and quantized_tensor.py: the quantized tensor base class.

megatron-core only uses it for isinstance checks (fp8_utils.is_float8tensor); with FP8 off no
tensor is ever one.
"""

import torch


class QuantizedTensor(torch.Tensor):
    """TE quantized_tensor.QuantizedTensor: base class of every FP8/FP4 tensor."""


class Float8Tensor(QuantizedTensor):
    """TE tensor/float8_tensor.py Float8Tensor."""
