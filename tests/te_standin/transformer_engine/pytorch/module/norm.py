"""TE 2.11.0 RMSNorm and LayerNorm (pytorch/module/rmsnorm.py, layernorm.py), which are fusible
operations (pytorch/ops/basic/rmsnorm.py, layer_norm.py) rather than TransformerEngineBaseModules.

Names and shapes: `weight` [normalized_shape] (ones, or zeros with zero_centered_gamma); LayerNorm
adds `bias`. The legacy `sequence_parallel` flag is set on the parameters (module/rmsnorm.py
reset_parameters). `_extra_state` comes from pytorch/ops/op.py BasicOperation: get_extra_state
returns `torch.empty(0, dtype=torch.uint8)` when the op has no quantizer state ("if not state:
return torch.empty(0, dtype=torch.uint8)"), and set_extra_state returns for None or an empty tensor.
Norms are not tensor-parallel in TE.
"""

import pickle

import torch

from .base import resolve_device


class _NormOp(torch.nn.Module):
    _has_bias = False

    def __init__(self, normalized_shape=None, eps=1e-5, sequence_parallel=None, params_dtype=None,
                 zero_centered_gamma=False, hidden_size=None, device=None, dtype=None, **kwargs):
        super().__init__()
        if normalized_shape is None:
            if hidden_size is None:
                raise RuntimeError("Neither `normalized_shape` nor `hidden_size` (deprecated) args are provided")
            normalized_shape = hidden_size
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        dtype = dtype or params_dtype or torch.get_default_dtype()
        device = resolve_device(device)
        self.eps, self.zero_centered_gamma, self.sequence_parallel = eps, zero_centered_gamma, sequence_parallel
        self._fp8_metas = None
        self.weight = torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if self._has_bias:
            self.bias = torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        if device.type != "meta":
            with torch.no_grad():
                self.weight.fill_(0.0 if zero_centered_gamma else 1.0)
                if self._has_bias:
                    self.bias.zero_()
        if sequence_parallel is not None:
            self.weight.sequence_parallel = sequence_parallel
            if self._has_bias:
                self.bias.sequence_parallel = sequence_parallel

    def get_extra_state(self):
        return torch.empty(0, dtype=torch.uint8)

    def set_extra_state(self, state):
        if state is None or state.numel() == 0:
            return
        state = pickle.loads(state.detach().numpy(force=True).tobytes())
        if state is None or len(state) == 0:
            return
        raise RuntimeError("quantizer state cannot be loaded by the CPU transformer_engine stand-in")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward: the CPU transformer_engine stand-in has no kernels")


class RMSNorm(_NormOp):
    pass


class LayerNorm(_NormOp):
    _has_bias = True
