"""TE 2.11.0 pytorch/module/base.py: TransformerEngineBaseModule, the base of Linear,
LayerNormLinear, GroupedLinear and DotProductAttention.

What is kept from TE: the FP8 bookkeeping attributes megatron-core reads (`fp8`, `fp8_calibration`,
`fp8_meta["fp8_checkpoint"]`, `init_fp8_metadata`), parameter registration with an init function
(`register_parameter(..., init_fn=...)`, `reset_parameters`), and the checkpoint extra state:
`get_extra_state` returns `torch.empty(0, dtype=torch.uint8)` when FP8 is off (base.py, "Store FP8
state if needed ... if not fp8_checkpoint: return torch.empty(0, dtype=torch.uint8)"), and
`set_extra_state` returns early for None or an empty tensor ("No FP8 is indicated by an empty
tensor we don't need to unpickle"), else unpickles a byte tensor. Because the class overrides
get_extra_state, torch puts an `_extra_state` entry in every state_dict, as with real TE.
"""

import pickle

import torch

from ..quantization import FP8GlobalStateManager


def resolve_device(device):
    """TE modules take `device` (megatron passes "cpu", "meta" or torch.cuda.current_device())."""
    if device is None or isinstance(device, int) or str(device).startswith("cuda"):
        return torch.device("cpu")
    return torch.device(device)


def set_tensor_model_parallel_attributes(tensor, is_parallel, dim, stride):
    """TE distributed.set_tensor_model_parallel_attributes: the attributes megatron reads."""
    tensor.tensor_model_parallel = is_parallel
    tensor.partition_dim = dim
    tensor.partition_stride = stride


def divide(numerator, denominator):
    """TE utils.divide: exact division, as TE asserts."""
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by {denominator}")
    return numerator // denominator


class TransformerEngineBaseModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.name = None
        self.fp8_initialized = False
        self.fp8 = False
        self.fp8_calibration = False
        self.fp8_parameters = False
        self.fp8_meta = {"fp8_checkpoint": False, "fp8_group": None}
        self.quantizers = {"scaling_fwd": {}, "scaling_bwd": {}}
        self.tp_group = None
        self.tp_size = 1
        self.sequence_parallel = False
        self.param_init_meta = {}
        self.primary_weights_in_fp8 = False
        self.activation_dtype = None

    def register_parameter(self, name, param, init_fn=None, **kwargs):
        super().register_parameter(name, param)
        if name not in self.param_init_meta:
            self.param_init_meta[name] = init_fn

    def reset_parameters(self, defer_init=False):
        """TE initializes each parameter with its init_fn unless the device is meta."""
        if defer_init:
            return
        with torch.no_grad():
            for name, param in self.named_parameters(recurse=False):
                init_fn = self.param_init_meta.get(name)
                if init_fn is not None:
                    init_fn(param)

    def init_fp8_metadata(self, num_gemms=1):
        """TE base.py init_fp8_metadata with FP8 off: flags from the global state, nothing allocated."""
        self.fp8_parameters = FP8GlobalStateManager.with_fp8_parameters()
        self.fp8 = FP8GlobalStateManager.is_fp8_enabled()
        self.fp8_calibration = FP8GlobalStateManager.is_fp8_calibration()
        self.fp8_meta["fp8_checkpoint"] = self.fp8 or self.fp8_calibration
        self.fp8_initialized = False

    def set_tensor_parallel_group(self, tp_group):
        self.tp_group = tp_group

    def get_extra_state(self):
        if self.fp8_meta["fp8_checkpoint"] or self.fp8 or self.fp8_calibration:
            raise RuntimeError("FP8 extra state is not available in the CPU transformer_engine stand-in")
        return torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state):
        if state is None:
            return
        if isinstance(state, torch.Tensor):
            if state.numel() == 0:
                return
            state = pickle.loads(state.detach().cpu().numpy().tobytes())
        else:
            raise RuntimeError("Unsupported checkpoint format.")
        if state is None:
            return
        raise RuntimeError("FP8 extra state cannot be loaded by the CPU transformer_engine stand-in")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward: the CPU transformer_engine stand-in "
                                  "has no kernels (it proves names, shapes and checkpoints only)")
