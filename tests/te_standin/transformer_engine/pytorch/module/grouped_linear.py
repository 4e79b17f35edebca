"""TE 2.11.0 GroupedLinear (pytorch/module/grouped_linear.py): one GEMM per local expert.

Names and shapes: `weight{i}` [out_features, in_features] and, with bias, `bias{i}` [out_features],
for i in range(num_gemms) (`self.register_parameter(f"weight{i}", ...)`). Partitioning as Linear:
"column" divides out_features by tp_size, "row" in_features (megatron-core passes parallel_mode None
and divides itself when experts communicate explicitly). TE refuses bias with tp_size > 1.
`init_fp8_metadata(num_gemms)` is called at the end of __init__, as in TE. `_extra_state`: base.py.
"""

import torch

from .base import TransformerEngineBaseModule, divide, resolve_device, set_tensor_model_parallel_attributes
from .linear import _constant, _tp_size


class GroupedLinear(TransformerEngineBaseModule):
    def __init__(self, num_gemms, in_features, out_features, sequence_parallel=False, fuse_wgrad_accumulation=False,
                 tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None, init_method=None,
                 bias=True, return_bias=False, params_dtype=None, parallel_mode=None, device="cuda", **kwargs):
        super().__init__()
        params_dtype = params_dtype or torch.get_default_dtype()
        device = resolve_device(device)
        self.num_gemms = num_gemms
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.return_bias = bias, return_bias
        self.apply_bias = bias and not return_bias
        self.tp_group = tp_group
        self.tp_size = _tp_size(tp_group, tp_size)
        if self.tp_size > 1 and bias:
            raise ValueError("GroupedLinear doesn't support bias when TP > 1.")
        self.parallel_mode = parallel_mode
        if parallel_mode == "column":
            self.out_features = divide(self.out_features, self.tp_size)
        elif parallel_mode == "row":
            self.in_features = divide(self.in_features, self.tp_size)
        self.sequence_parallel = self.tp_size > 1 and sequence_parallel
        self.rng_tracker_name = rng_tracker_name
        for i in range(num_gemms):
            self.register_parameter(f"weight{i}", torch.nn.Parameter(
                torch.empty(self.out_features, self.in_features, device=device, dtype=params_dtype)),
                init_fn=init_method or (lambda w: torch.nn.init.normal_(w, mean=0.0, std=0.023)))
            if bias:
                self.register_parameter(f"bias{i}", torch.nn.Parameter(
                    torch.empty(self.out_features, device=device, dtype=params_dtype)), init_fn=_constant(0.0))
            else:
                setattr(self, f"bias{i}", torch.Tensor().to(dtype=params_dtype, device=device))
        self.init_fp8_metadata(num_gemms=num_gemms)
        self.reset_parameters(defer_init=device.type == "meta")
        for i in range(num_gemms):
            set_tensor_model_parallel_attributes(getattr(self, f"weight{i}"), True,
                                                 1 if parallel_mode == "row" else 0, 1)
