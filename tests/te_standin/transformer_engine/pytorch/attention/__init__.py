"""TE 2.11.0 pytorch/attention: DotProductAttention.

TE's DotProductAttention (attention/dot_product_attention/dot_product_attention.py) is a
TransformerEngineBaseModule, so it has an `_extra_state` (base.py). Its only parameter is
`softmax_offset` [num_attention_heads // tp_size], registered for softmax_type "learnable"; the
flash/fused/unfused backends it holds are plain torch modules without parameters or extra state.
"""

from .dot_product_attention import DotProductAttention  # noqa: F401
