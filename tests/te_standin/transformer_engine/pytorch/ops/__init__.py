"""TE 2.11.0 pytorch/ops: the fusible-operation API.

megatron-core names `te.pytorch.ops.Sequential` and `FusibleOperation` in annotations of
TEFusedMLP (extensions/transformer_engine.py), evaluated at import; that MLP is only built with
`use_te_op_fuser`, which the stand-in does not support, so these classes refuse to be built.
"""


class FusibleOperation:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("te.pytorch.ops is not available in the CPU transformer_engine stand-in")


class Sequential(FusibleOperation):
    pass
