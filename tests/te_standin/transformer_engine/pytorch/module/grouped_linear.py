"""TE 2.11.0 GroupedLinear (pytorch/module/grouped_linear.py): one GEMM per local expert.

Names and shapes: `weight{i}` [out_features, in_features] and, with bias, `bias{i}` [out_features],
for i in range(num_gemms) (`self.register_parameter(f"weight{i}", ...)`). Partitioning as Linear:
"column" divides out_features by tp_size, "row" in_features (megatron-core passes parallel_mode None
and divides itself when experts communicate explicitly). TE refuses bias with tp_size > 1.
`init_fp8_metadata(num_gemms)` is called at the end of __init__, as in TE. `_extra_state`: base.py.
"""

import torch

from .base import TransformerEngineBaseModule, resolve_device
from .linear import register_weight_and_bias, set_weight_attributes, setup_partition


class GroupedLinear(TransformerEngineBaseModule):
    def __init__(self, num_gemms, in_features, out_features, sequence_parallel=False, fuse_wgrad_accumulation=False,
                 tp_group=None, tp_size=1, get_rng_state_tracker=None, rng_tracker_name=None, init_method=None,
                 bias=True, return_bias=False, params_dtype=None, parallel_mode=None, device="cuda", **kwargs):
        super().__init__()
        params_dtype = params_dtype or torch.get_default_dtype()
        device = resolve_device(device)
        self.num_gemms = num_gemms
        setup_partition(self, in_features, out_features, tp_group, tp_size, parallel_mode, sequence_parallel,
                        bias, return_bias, rng_tracker_name)
        if self.tp_size > 1 and bias:
            raise ValueError("GroupedLinear doesn't support bias when TP > 1.")
        for i in range(num_gemms):
            register_weight_and_bias(self, i, device, params_dtype, init_method, bias)
        self.init_fp8_metadata(num_gemms=num_gemms)
        self.reset_parameters(defer_init=device.type == "meta")
        for i in range(num_gemms):
            set_weight_attributes(self, i)
