"""TE 2.11.0 attention/dot_product_attention/dot_product_attention.py DotProductAttention (see
__init__ for names); the constructor takes TE's arguments."""

import torch

from ..module.base import TransformerEngineBaseModule, resolve_device


class DotProductAttention(TransformerEngineBaseModule):
    def __init__(self, num_attention_heads, kv_channels, num_gqa_groups=None, attention_dropout=0.0,
                 qkv_format="sbhd", attn_mask_type="causal", window_size=None, sequence_parallel=False,
                 tp_size=1, get_rng_state_tracker=None, tp_group=None, layer_number=None, attention_type="self",
                 cp_group=None, cp_global_ranks=None, cp_stream=None, cp_comm_type="p2p", softmax_scale=None,
                 softmax_type="vanilla", return_max_logit=False, **kwargs):
        super().__init__()
        self.qkv_format, self.attn_mask_type, self.window_size = qkv_format, attn_mask_type, window_size
        self.tp_group = tp_group
        self.tp_size = tp_size if tp_group is None else torch.distributed.get_world_size(tp_group)
        self.num_attention_heads = num_attention_heads
        self.num_gqa_groups = num_attention_heads if num_gqa_groups is None else num_gqa_groups
        self.layer_number = 1 if layer_number is None else layer_number
        self.kv_channels, self.softmax_scale, self.attention_type = kv_channels, softmax_scale, attention_type
        self.softmax_type = softmax_type
        self.softmax_offset = None
        if softmax_type == "off-by-one":
            self.softmax_offset = torch.zeros(num_attention_heads // self.tp_size)
        if softmax_type == "learnable":
            self.register_parameter("softmax_offset", torch.nn.Parameter(
                torch.empty(num_attention_heads // self.tp_size, device=resolve_device(None))))
