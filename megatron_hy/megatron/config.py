"""Hy3 HF config <-> megatron-core TransformerConfig arguments and Megatron command-line flags.

Hy3's MoE, in Megatron terms: sigmoid router scores, expert chosen by score + expert bias, the
chosen scores normalized and scaled by `router_scaling_factor` (2.826), router in fp32, one
shared expert, dense-first layers through `moe_layer_freq`, q/k RMSNorm, RoPE, GQA, untied
embeddings, and MTP layers. The expert bias is frozen for SFT (update rate 0) and there is no
auxiliary loss.
"""

from __future__ import annotations

import math

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
    import torch.nn.functional as F

    check_supported(cfg)
    kw = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_heads,
        num_query_groups=cfg.num_kv_heads,
        kv_channels=cfg.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.rms_norm_eps,
        qk_layernorm=True,
        add_bias_linear=False,
        add_qkv_bias=False,
        gated_linear_unit=True,
        activation_func=F.silu,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        num_moe_experts=cfg.num_experts,
        moe_ffn_hidden_size=cfg.moe_ffn,
        moe_shared_expert_intermediate_size=cfg.shared_ffn,
        moe_router_topk=cfg.top_k,
        moe_router_score_function="sigmoid",
        moe_router_enable_expert_bias=True,
        moe_router_bias_update_rate=0.0,
        moe_router_topk_scaling_factor=cfg.router_scaling_factor,
        moe_router_dtype="fp32",
        moe_router_load_balancing_type="none",
        moe_aux_loss_coeff=0.0,
        moe_layer_freq=[1 if t == "sparse" else 0 for t in cfg.layer_types],
    )
    if cfg.num_mtp_layers:
        kw["mtp_num_layers"] = cfg.num_mtp_layers
    return kw


def gpt_model_kwargs(cfg: Hy3Config, padded_vocab: int | None = None) -> dict:
    """Arguments for megatron.core.models.gpt.GPTModel besides config and specs."""
    return dict(
        vocab_size=padded_vocab or cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        position_embedding_type="rope",
        rotary_base=cfg.rope_theta,
        rotary_percent=1.0,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
    )


def padded_vocab_size(vocab: int, tp: int = 1, divisible_by: int = 1) -> int:
    """Smallest multiple of divisible_by * tp that holds the vocabulary (Megatron pads the embedding)."""
    step = max(1, divisible_by) * max(1, tp)
    return int(math.ceil(vocab / step) * step)


def megatron_lm_flags(cfg: Hy3Config) -> list[str]:
    """Megatron-LM command-line flags for this model (pretrain_gpt.py and friends)."""
    check_supported(cfg)
    k = cfg.first_k_dense
    if cfg.layer_types != tuple(["dense"] * k + ["sparse"] * (cfg.num_layers - k)):
        freq = "[" + ",".join("1" if t == "sparse" else "0" for t in cfg.layer_types) + "]"
    else:
        freq = f"([0]*{k}+[1]*{cfg.num_layers - k})"
    flags = [
        f"--num-layers {cfg.num_layers}", f"--hidden-size {cfg.hidden_size}",
        f"--ffn-hidden-size {cfg.intermediate_size}", f"--num-attention-heads {cfg.num_heads}",
        "--group-query-attention", f"--num-query-groups {cfg.num_kv_heads}", f"--kv-channels {cfg.head_dim}",
        "--normalization RMSNorm", f"--norm-epsilon {cfg.rms_norm_eps}", "--qk-layernorm",
        "--disable-bias-linear", "--swiglu", "--position-embedding-type rope", f"--rotary-base {int(cfg.rope_theta)}",
        f"--max-position-embeddings {cfg.max_position_embeddings}", f"--vocab-size {cfg.vocab_size}",
        f"--num-experts {cfg.num_experts}", f"--moe-ffn-hidden-size {cfg.moe_ffn}",
        f"--moe-shared-expert-intermediate-size {cfg.shared_ffn}", f"--moe-router-topk {cfg.top_k}",
        "--moe-router-score-function sigmoid", "--moe-router-enable-expert-bias",
        "--moe-router-bias-update-rate 0", f"--moe-router-topk-scaling-factor {cfg.router_scaling_factor}",
        "--moe-router-dtype fp32", "--moe-router-load-balancing-type none", "--moe-aux-loss-coeff 0",
        f"--moe-layer-freq '{freq}'",
    ]
    if not cfg.tie_word_embeddings:
        flags.append("--untie-embeddings-and-output-weights")
    if cfg.num_mtp_layers:
        flags.append(f"--mtp-num-layers {cfg.num_mtp_layers}")
    return flags


def swift_moe_settings(cfg: Hy3Config) -> dict:
    """`megatron sft` arguments (ms-swift 4.6 names) that pin Hy3's MoE training behaviour.

    ms-swift reads the architecture from config.json through mcore-bridge, which takes the sigmoid
    router and expert bias from it but defaults the bias update rate to 1e-3 and the load
    balancing to an aux loss; megatron-core fields that `megatron sft` has no flag for travel in
    `megatron_extra_kwargs`. Every recipe carries these settings.
    """
    check_supported(cfg)
    settings = {
        "moe_router_load_balancing_type": "none",
        "moe_aux_loss_coeff": 0.0,
        "megatron_extra_kwargs": {"moe_router_score_function": "sigmoid", "moe_router_enable_expert_bias": True,
                                  "moe_router_bias_update_rate": 0.0},
        "moe_router_dtype": "fp32",
        "moe_grouped_gemm": True,
        "moe_token_dispatcher_type": "alltoall",
    }
    if cfg.num_mtp_layers:
        settings["mtp_num_layers"] = cfg.num_mtp_layers
    return settings
