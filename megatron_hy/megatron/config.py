"""Hy3 HF config <-> megatron-core TransformerConfig arguments and Megatron command-line flags.

Hy3's MoE, in Megatron terms: sigmoid router scores, expert chosen by score + expert bias, the
chosen scores normalized and scaled by `router_scaling_factor` (2.826), router in fp32, one
shared expert, dense-first layers through `moe_layer_freq`, q/k RMSNorm, RoPE, GQA, untied
embeddings, and MTP layers. The expert bias is frozen for SFT (update rate 0) and there is no
auxiliary loss. Every argument and flag is a row of the field table (settings.py).
"""

from __future__ import annotations

import math

from .. import settings
from ..config import Hy3Config
from ..errors import Hy3Error


def check_supported(cfg: Hy3Config) -> None:
    if not cfg.moe_layers:
        # block_specs takes the MTP block's (and the MoE layers') spec from megatron-core's MoE decoder layer.
        raise Hy3Error("every decoder layer is dense (no MoE layer in the layer pattern): Hy3 is a mixture-of-experts "
                       "model and the Megatron side needs at least one MoE layer")
    if cfg.top_k == 1:
        # megatron-core 0.16 topk_routing_with_score_function: `probs = scores / sum if topk > 1 else scores`,
        # so a lone expert keeps its raw sigmoid score, while Hy3 (transformers hy_v3) normalizes it to 1.
        raise Hy3Error("num_experts_per_tok is 1: Megatron-Core's sigmoid router does not normalize a single "
                       "expert's weight (it keeps sigmoid(score)), while Hy3 normalizes it to 1 before scaling; "
                       "the Megatron model would compute something else. Use top-k >= 2.")


def transformer_config_kwargs(cfg: Hy3Config) -> dict:
    """Arguments for megatron.core.transformer.TransformerConfig describing this Hy3 model."""
    check_supported(cfg)
    return settings.render(cfg, "mcore")


def gpt_model_kwargs(cfg: Hy3Config, padded_vocab: int | None = None) -> dict:
    """Arguments for megatron.core.models.gpt.GPTModel besides config and specs."""
    return settings.render(cfg, "gpt", vocab_size=padded_vocab or cfg.vocab_size)


def padded_vocab_size(vocab: int, tp: int = 1, divisible_by: int = 1) -> int:
    """Smallest multiple of divisible_by * tp that holds the vocabulary (Megatron pads the embedding)."""
    step = max(1, divisible_by) * max(1, tp)
    return int(math.ceil(vocab / step) * step)


def megatron_lm_flags(cfg: Hy3Config) -> list[str]:
    """Megatron-LM command-line flags for this model (pretrain_gpt.py and friends)."""
    check_supported(cfg)
    flags = []
    for flag, value in settings.render(cfg, "flag").items():
        if value is True:
            flags.append(flag)
        elif value is not False:
            flags.append(f"{flag} {value}")
    return flags


def swift_moe_settings(cfg: Hy3Config) -> dict:
    """`megatron sft` arguments (ms-swift 4.6 names) that pin Hy3's MoE training behaviour.

    ms-swift reads the architecture from config.json through mcore-bridge, which takes the sigmoid
    router and expert bias from it but defaults the bias update rate to 1e-3 and the load
    balancing to an aux loss; megatron-core fields that `megatron sft` has no flag for travel in
    `megatron_extra_kwargs`. Every recipe carries these settings.
    """
    check_supported(cfg)
    return settings.render(cfg, "swift")
