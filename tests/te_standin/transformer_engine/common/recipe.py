"""FP8/FP4 recipe classes: TE 2.11.0 transformer_engine/common/recipe/__init__.py.

megatron-core subclasses DelayedScaling at import (extensions/transformer_engine.py TEDelayedScaling)
and checks isinstance against it when merging grouped-linear `_extra_state`. Same class names and
type predicates as TE; no quantization is implemented (the stand-in runs with FP8 off).
"""

from dataclasses import dataclass
from enum import Enum


class Format(Enum):
    """TE recipe.Format: E4M3, E5M2 and HYBRID (E4M3 forward, E5M2 backward)."""
    E4M3 = "E4M3"
    E5M2 = "E5M2"
    HYBRID = "HYBRID"


class Recipe:
    """TE recipe.Recipe: the base class with one predicate per recipe kind."""

    def nvfp4(self):
        return isinstance(self, NVFP4BlockScaling)

    def mxfp8(self):
        return isinstance(self, MXFP8BlockScaling)

    def delayed(self):
        return isinstance(self, DelayedScaling)

    def float8_current_scaling(self):
        return isinstance(self, Float8CurrentScaling)

    def float8_per_tensor_scaling(self):
        return isinstance(self, (DelayedScaling, Float8CurrentScaling))

    def float8_block_scaling(self):
        return isinstance(self, Float8BlockScaling)

    def custom(self):
        return isinstance(self, CustomRecipe)


@dataclass()
class DelayedScaling(Recipe):
    """TE recipe.DelayedScaling fields (margin, format, amax history, precision overrides)."""
    margin: int = 0
    fp8_format: Format = Format.HYBRID
    amax_history_len: int = 1024
    amax_compute_algo: str = "max"
    scaling_factor_compute_algo: object = None
    override_linear_precision: tuple = (False, False, False)
    reduce_amax: bool = True
    fp8_dpa: bool = False
    fp8_mha: bool = False


@dataclass()
class Float8CurrentScaling(Recipe):
    fp8_format: Format = Format.HYBRID


@dataclass()
class MXFP8BlockScaling(Recipe):
    fp8_format: Format = Format.E4M3


@dataclass()
class Float8BlockScaling(Recipe):
    fp8_format: Format = Format.E4M3


@dataclass()
class NVFP4BlockScaling(Recipe):
    pass


@dataclass()
class CustomRecipe(Recipe):
    qfactory: object = None
