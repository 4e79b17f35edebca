"""TE 2.11.0 pytorch/module: the layers megatron-core's transformer-engine spec builds."""

from .base import TransformerEngineBaseModule  # noqa: F401
from .grouped_linear import GroupedLinear  # noqa: F401
from .linear import LayerNormLinear, Linear  # noqa: F401
from .norm import LayerNorm, RMSNorm  # noqa: F401
