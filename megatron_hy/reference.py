"""The HF reference: transformers' HYV3ForCausalLM, plus an MTP forward in plain torch.

transformers ignores the MTP layer, so its forward is written here on top of transformers' own
HYV3 decoder layer, with Megatron's semantics (megatron-core MultiTokenPredictionLayer, the
DeepSeek-V3 design): at depth k the tokens are shifted left once more (the last position gets
token 0), and

    x = eh_proj(cat(enorm(embed(tokens)), hnorm(h)))   # h: main model output after its final norm,
    h = final_layernorm(decoder_layer(x))                #    or the previous depth's output
    logits_k = lm_head(h)

with the same RoPE positions and causal mask as the main model.
"""

from __future__ import annotations

from pathlib import Path

from .hf_checkpoint import HFCheckpoint


def load_hf_model(path: str | Path, extra_layers: int = 0, dtype=None):
    """HYV3ForCausalLM from a checkpoint in either layout, fp32 and eager attention by default.

    extra_layers > 0 also builds the following (MTP) decoder layers as ordinary MoE layers.
    """
    import torch
    from transformers import HYV3Config, HYV3ForCausalLM
    from transformers.utils import logging as hf_logging

    from .config import load_config

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cfg = load_config(path)
    kw = cfg.to_transformers()
    if extra_layers:
        kw["num_hidden_layers"] = cfg.num_layers + extra_layers
        kw["mlp_layer_types"] = list(cfg.layer_types) + ["sparse"] * extra_layers
    config = HYV3Config(**kw)
    config._attn_implementation = "eager"
    model = HYV3ForCausalLM.from_pretrained(str(path), config=config, dtype=dtype or torch.float32)
    return model.eval()


def _causal_additive(seq: int, dtype):
    import torch

    return torch.full((seq, seq), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def reference_logits(path: str | Path, tokens, dtype=None) -> tuple:
    """(logits [b, s, V], [MTP logits per depth]) for integer tokens [b, s]."""
    import torch

    main = load_hf_model(path, dtype=dtype)
    cfg_layers = main.config.num_hidden_layers
    with torch.no_grad():
        out = main.model(input_ids=tokens)
        h = out.last_hidden_state
        logits = main.lm_head(h)
    mtp_logits = []
    ck = HFCheckpoint(path)
    n = ck.config.num_mtp_layers
    if n:
        ext = load_hf_model(path, extra_layers=n, dtype=dtype)
        d = h.dtype
        positions = torch.arange(tokens.shape[1])[None].expand(tokens.shape[0], -1)
        mask = _causal_additive(tokens.shape[1], d)
        ids = tokens
        with torch.no_grad():
            cos_sin = ext.model.rotary_emb(h, positions)
            for k in range(n):
                w = {name: ck.read(f"model.layers.{cfg_layers + k}.{name}").to(d)
                     for name in ("eh_proj.weight", "enorm.weight", "hnorm.weight", "final_layernorm.weight")}
                ids = torch.roll(ids, -1, dims=-1)
                ids[..., -1] = 0
                e = _rms(ext.model.embed_tokens(ids), w["enorm.weight"], ck.config.rms_norm_eps)
                x = torch.cat([e, _rms(h, w["hnorm.weight"], ck.config.rms_norm_eps)], -1) @ w["eh_proj.weight"].T
                x = ext.model.layers[cfg_layers + k](x, attention_mask=mask, position_ids=positions,
                                                      position_embeddings=cos_sin)
                h = _rms(x, w["final_layernorm.weight"], ck.config.rms_norm_eps)
                mtp_logits.append(ext.lm_head(h))
    return logits, mtp_logits


def _rms(x, weight, eps: float):
    """RMSNorm exactly as transformers' HYV3RMSNorm computes it."""
    import torch

    dtype = x.dtype
    y = x.to(torch.float32)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(dtype)
