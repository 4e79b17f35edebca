"""FP8 global state and autocast contexts: TE 2.11.0 pytorch/quantization.py.

The stand-in always runs with FP8 off: FP8GlobalStateManager reports no FP8 and no FP8 parameters,
and the autocast/model-init contexts accept `enabled=False` (what megatron-core and mcore-bridge
pass outside FP8 recipes) and refuse `enabled=True`.
"""

from contextlib import contextmanager


class FP8GlobalStateManager:
    """TE quantization.FP8GlobalStateManager, the queries megatron-core makes, FP8 off."""
    FP8_ENABLED = False
    FP8_CALIBRATION = False
    FP8_PARAMETERS = False
    HIGH_PRECISION_INIT_VAL = False
    IS_FIRST_FP8_MODULE = False
    FP8_RECIPE = None
    FP8_DISTRIBUTED_GROUP = None
    FP8_GRAPH_CAPTURING = False
    global_amax_buffer = {}
    global_amax_history_buffer = {}

    @classmethod
    def is_fp8_enabled(cls):
        return False

    @classmethod
    def is_fp8_calibration(cls):
        return False

    @classmethod
    def with_fp8_parameters(cls):
        return False

    @classmethod
    def with_high_precision_init_val(cls):
        return False

    @classmethod
    def is_first_fp8_module(cls):
        return False

    @classmethod
    def get_fp8_recipe(cls):
        return None

    @classmethod
    def get_fp8_group(cls):
        return None

    @classmethod
    def fp8_graph_capturing(cls):
        return False

    @classmethod
    def is_fp8_available(cls):
        return False, "CPU stand-in for transformer_engine"

    @classmethod
    def reset(cls):
        pass


def _off(enabled, what):
    if enabled:
        raise RuntimeError(f"{what}(enabled=True): the CPU transformer_engine stand-in has no FP8")


@contextmanager
def autocast(enabled=True, recipe=None, amax_reduction_group=None, _graph=False):
    _off(enabled, "autocast")
    yield


@contextmanager
def fp8_autocast(enabled=True, calibrating=False, fp8_recipe=None, fp8_group=None, _graph=False):
    _off(enabled or calibrating, "fp8_autocast")
    yield


@contextmanager
def quantized_model_init(enabled=True, recipe=None, preserve_high_precision_init_val=False):
    _off(enabled, "quantized_model_init")
    yield


@contextmanager
def fp8_model_init(enabled=True, recipe=None, preserve_high_precision_init_val=False):
    _off(enabled, "fp8_model_init")
    yield


def is_fp8_available(return_reason=False):
    return (False, "CPU stand-in") if return_reason else False


is_mxfp8_available = is_fp8_block_scaling_available = is_nvfp4_available = is_fp8_available
