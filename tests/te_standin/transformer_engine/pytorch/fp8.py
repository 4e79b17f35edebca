"""TE 2.11.0 pytorch/fp8.py: the deprecated alias module megatron-core still imports from."""

from .quantization import FP8GlobalStateManager, fp8_autocast, fp8_model_init  # noqa: F401
from ..common.recipe import DelayedScaling, Format, Recipe  # noqa: F401
