"""TE 2.11.0 Linear (pytorch/module/linear.py) and LayerNormLinear (pytorch/module/layernorm_linear.py).

Names and shapes: `weight` [out_features, in_features]; `bias` [out_features] registered only when
bias=True (otherwise an unregistered empty tensor, so it is in no state_dict); LayerNormLinear adds
`layer_norm_weight` [in_features] and, for normalization="LayerNorm" only, `layer_norm_bias`.
Partitioning: with parallel_mode "column" out_features is divided by tp_size, with "row"
in_features ("if self.parallel_mode == 'column': self.out_features = divide(self.out_features,
self.tp_size)"); tp_size is the size of tp_group when one is given. The weight's tensor-parallel
attributes are dim 1 for row, 0 otherwise (reset_parameters). `_extra_state`: base.py.
"""

import torch

from .base import TransformerEngineBaseModule, divide, resolve_device, set_tensor_model_parallel_attributes


def _tp_size(tp_group, tp_size):
    if tp_group is None:
        return tp_size
    return torch.distributed.get_world_size(tp_group)


def _constant(value):
    return lambda t: t.fill_(value)


def setup_partition(module, in_features, out_features, tp_group, tp_size, parallel_mode, sequence_parallel,
                    bias, return_bias, rng_tracker_name):
    """The sizes and flags TE's linear modules set before registering parameters: the local
    out_features ("column") or in_features ("row") divided by the tensor-parallel size."""
    if parallel_mode not in (None, "column", "row"):
        raise ValueError(f"parallel_mode {parallel_mode} not supported")
    module.in_features, module.out_features = in_features, out_features
    module.use_bias, module.return_bias = bias, return_bias
    module.apply_bias = bias and not return_bias
    module.tp_group = tp_group
    module.tp_size = _tp_size(tp_group, tp_size)
    module.parallel_mode = parallel_mode
    if parallel_mode == "column":
        module.out_features = divide(module.out_features, module.tp_size)
    elif parallel_mode == "row":
        module.in_features = divide(module.in_features, module.tp_size)
    module.sequence_parallel = module.tp_size > 1 and sequence_parallel
    module.rng_tracker_name = rng_tracker_name


def register_weight_and_bias(module, suffix, device, params_dtype, init_method, bias):
    """`weight{suffix}` [out, in] and, with bias, `bias{suffix}` [out]; without bias an unregistered empty
    tensor, so it is in no state_dict."""
    module.register_parameter(f"weight{suffix}", torch.nn.Parameter(
        torch.empty(module.out_features, module.in_features, device=device, dtype=params_dtype)),
        init_fn=init_method or (lambda w: torch.nn.init.normal_(w, mean=0.0, std=0.023)))
    if bias:
        module.register_parameter(f"bias{suffix}", torch.nn.Parameter(
            torch.empty(module.out_features, device=device, dtype=params_dtype)), init_fn=_constant(0.0))
    else:
        setattr(module, f"bias{suffix}", torch.Tensor().to(dtype=params_dtype, device=device))


def set_weight_attributes(module, suffix=""):
    set_tensor_model_parallel_attributes(getattr(module, f"weight{suffix}"), True,
                                         1 if module.parallel_mode == "row" else 0, 1)


class Linear(TransformerEngineBaseModule):
    def __init__(self, in_features, out_features, sequence_parallel=False, fuse_wgrad_accumulation=False,
                 tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None, init_method=None,
                 bias=True, return_bias=False, params_dtype=None, parallel_mode=None, device="cuda", **kwargs):
        super().__init__()
        params_dtype = params_dtype or torch.get_default_dtype()
        device = resolve_device(device)
        setup_partition(self, in_features, out_features, tp_group, tp_size, parallel_mode, sequence_parallel,
                        bias, return_bias, rng_tracker_name)
        self.weight_names, self.bias_names = ["weight"], ["bias"]
        register_weight_and_bias(self, "", device, params_dtype, init_method, bias)
        self.reset_parameters(defer_init=device.type == "meta")
        set_weight_attributes(self)
        if bias and parallel_mode == "column":
            set_tensor_model_parallel_attributes(self.bias, True, 0, 1)


class LayerNormLinear(TransformerEngineBaseModule):
    def __init__(self, in_features, out_features, eps=1e-5, sequence_parallel=False, fuse_wgrad_accumulation=False,
                 tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None, init_method=None,
                 bias=True, normalization="LayerNorm", return_bias=False, params_dtype=None, parallel_mode=None,
                 return_layernorm_output=False, zero_centered_gamma=False, device="cuda", **kwargs):
        super().__init__()
        if normalization not in ("LayerNorm", "RMSNorm"):
            raise ValueError("Unsupported normalization type!")
        params_dtype = params_dtype or torch.get_default_dtype()
        device = resolve_device(device)
        self.normalization, self.eps, self.zero_centered_gamma = normalization, eps, zero_centered_gamma
        setup_partition(self, in_features, out_features, tp_group, tp_size, parallel_mode, sequence_parallel,
                        bias, return_bias, rng_tracker_name)
        gamma = _constant(0.0 if zero_centered_gamma else 1.0)
        self.register_parameter("layer_norm_weight", torch.nn.Parameter(
            torch.empty(in_features, device=device, dtype=params_dtype)), init_fn=gamma)
        if normalization != "RMSNorm":
            self.register_parameter("layer_norm_bias", torch.nn.Parameter(
                torch.empty(in_features, device=device, dtype=params_dtype)), init_fn=_constant(0.0))
        else:
            self.layer_norm_bias = None
        self.weight_names, self.bias_names = ["weight"], ["bias"]
        register_weight_and_bias(self, "", device, params_dtype, init_method, bias)
        self.reset_parameters(defer_init=device.type == "meta")
        set_weight_attributes(self)
        if bias and parallel_mode == "column":
            set_tensor_model_parallel_attributes(self.bias, True, 0, 1)
        for name in ("layer_norm_weight", "layer_norm_bias"):
            p = getattr(self, name)
            if p is not None:
                p.sequence_parallel = self.sequence_parallel
