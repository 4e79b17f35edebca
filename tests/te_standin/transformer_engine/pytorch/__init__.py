"""CPU stand-in for transformer_engine.pytorch 2.11.0 (pytorch/__init__.py): the names
megatron-core, mcore-bridge and ms-swift import at module load or build with. See ../../README.md."""

from . import distributed, module, ops, quantization, tensor  # noqa: F401
from .attention import DotProductAttention  # noqa: F401
from .distributed import CudaRNGStatesTracker, checkpoint  # noqa: F401
from .module import GroupedLinear, LayerNorm, LayerNormLinear, Linear, RMSNorm  # noqa: F401
from .quantization import (autocast, fp8_autocast, fp8_model_init, is_fp8_available,  # noqa: F401
                           quantized_model_init)
from .tensor import QuantizedTensor  # noqa: F401
