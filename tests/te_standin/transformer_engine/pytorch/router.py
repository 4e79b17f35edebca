"""TE 2.11.0 pytorch/router.py: fused MoE router kernels.

megatron-core imports these three names without a fallback when TE >= 2.7 (extensions/
transformer_engine.py) and calls them only with `moe_router_fusion`, which needs CUDA kernels.
"""


def _no_kernel(name):
    def f(*args, **kwargs):
        raise NotImplementedError(f"{name}: fused router kernels need CUDA (CPU transformer_engine stand-in); "
                                  "leave moe_router_fusion off")
    f.__name__ = name
    return f


fused_topk_with_score_function = _no_kernel("fused_topk_with_score_function")
fused_compute_score_for_moe_aux_loss = _no_kernel("fused_compute_score_for_moe_aux_loss")
fused_moe_aux_loss = _no_kernel("fused_moe_aux_loss")
