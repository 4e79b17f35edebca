"""Build Hy3 as a megatron-core GPTModel with its MTP block.

Transformer-engine spec when transformer_engine imports (GPU training), local spec otherwise (CPU).
Checkpoint keys are the same either way: the local spec maps its separate norms onto the TE keys
(`input_layernorm` -> `self_attention.linear_qkv.layer_norm_weight`, and for dense layers
`pre_mlp_layernorm` -> `mlp.linear_fc1.layer_norm_weight`). megatron-core's local spec also maps
the MoE layers' `pre_mlp_layernorm` that way, where the TE spec keeps `pre_mlp_layernorm.weight`;
our MoE layer spec drops that one entry so that CPU-built models use the TE keys too.
"""

from __future__ import annotations

import copy

from ..config import Hy3Config
from ..mapping import MCORE_ROWS
from ..mcore_versions import MOE_SPEC_IS_PARTIAL, since
from .config import gpt_model_kwargs, transformer_config_kwargs


def have_transformer_engine() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def make_transformer_config(cfg: Hy3Config, **overrides):
    from megatron.core.transformer import TransformerConfig

    kw = transformer_config_kwargs(cfg)
    kw.update(overrides)
    return TransformerConfig(**kw)


def _is_moe(spec) -> bool:
    from megatron.core.transformer.moe.moe_layer import MoELayer

    mlp = spec.submodules.mlp
    return (getattr(mlp, "func", None) if since(MOE_SPEC_IS_PARTIAL) else getattr(mlp, "module", None)) is MoELayer


def _te_keys(spec):
    """A local-spec MoE layer whose pre-MLP norm is saved under the TE key `pre_mlp_layernorm.weight`: the
    keys map leaves the modules the table has as standalone TE ops of MoE layers (`MCoreRow.te_op`) alone."""
    own = {r.mcore.rsplit(".", 1)[0] + "." for r in MCORE_ROWS if r.te_op and r.scope in ("layer", "moe")}
    spec = copy.deepcopy(spec)
    spec.submodules.sharded_state_dict_keys_map = {
        k: v for k, v in spec.submodules.sharded_state_dict_keys_map.items() if k not in own}
    return spec


def block_specs(tconfig, use_te: bool, vp_stage: int | None = None):
    """(this stage's decoder block spec, the MoE layer spec for the MTP block)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_decoder_layer_specs

    block = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=use_te, normalization="RMSNorm",
                                       vp_stage=vp_stage)
    moe = next(s for s in get_gpt_decoder_layer_specs(tconfig, use_te, normalization="RMSNorm") if _is_moe(s))
    if not use_te:
        block.layer_specs = [_te_keys(s) if _is_moe(s) else s for s in block.layer_specs]
        moe = _te_keys(moe)
    return block, moe


def build_gpt_model(cfg: Hy3Config, tconfig=None, padded_vocab: int | None = None, use_te: bool | None = None,
                    pre_process: bool | None = None, post_process: bool | None = None, vp_stage: int | None = None):
    """The Hy3 GPTModel for this rank's pipeline stage (parallel state must be initialized)."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec

    use_te = have_transformer_engine() if use_te is None else use_te
    tconfig = tconfig or make_transformer_config(cfg)
    block, moe_spec = block_specs(tconfig, use_te, vp_stage)
    mtp_spec = get_gpt_mtp_block_spec(tconfig, moe_spec, use_transformer_engine=use_te, vp_stage=vp_stage) \
        if cfg.num_mtp_layers else None
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    return GPTModel(config=tconfig, transformer_layer_spec=block, mtp_block_spec=mtp_spec,
                    pre_process=pre_process, post_process=post_process, vp_stage=vp_stage,
                    **gpt_model_kwargs(cfg, padded_vocab))
