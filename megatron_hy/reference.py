"""The HF reference: transformers' HYV3ForCausalLM, plus an MTP forward in plain torch.

transformers ignores the MTP layer, so its forward is written here on top of transformers' own
HYV3 decoder layer, with Megatron's semantics (megatron-core MultiTokenPredictionLayer, the
DeepSeek-V3 design): at depth k the tokens are shifted left once more (the last position gets
token 0), and

    x = eh_proj(cat(enorm(embed(tokens)), hnorm(h)))   # h: main model output after its final norm,
    h = final_layernorm(decoder_layer(x))                #    or the previous depth's output
    logits_k = lm_head(h)

with the same RoPE positions and causal mask as the main model.

The whole checkpoint is loaded by transformers' from_pretrained; a model of some of its decoder layers
(`hy3 verify parity --layers`) is built for its own config and filled with just those tensors
(build_reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .config import Hy3Config, load_config
from .errors import Hy3Error
from .formats.hf_checkpoint import HFCheckpoint
from .mapping import LAYER, LayerSubset, logical_tensors, MTP_EH_PROJ, MTP_ENORM, MTP_HNORM, MTP_NORM


def load_hf_model(path: str | Path, extra_layers: int = 0, dtype=None):
    """HYV3ForCausalLM from a checkpoint in either layout, fp32 and eager attention by default.

    extra_layers > 0 also builds the following (MTP) decoder layers as ordinary MoE layers.
    """
    import torch
    from transformers import HYV3Config, HYV3ForCausalLM
    from transformers.utils import logging as hf_logging

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


def build_reference(cfg: Hy3Config, read: Callable[[str], object], dtype=None) -> tuple:
    """(HYV3ForCausalLM of cfg, [its MTP layers as transformers' HYV3DecoderLayer]), filled from read(logical
    name) without from_pretrained: a model of some layers of a checkpoint reads just those (LayerSubset.reader).

    Each logical tensor goes to the parameter its outer-layout key names (mapping.py): transformers' own
    parameter names, fused experts included (`mlp.experts.gate_up_proj[e]` holds gate_e then up_e). Every
    parameter and buffer must be filled exactly, or this fails naming it.
    """
    import torch
    from transformers import HYV3Config, HYV3ForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.models.hy_v3.modeling_hy_v3 import HYV3DecoderLayer

    dtype = dtype or torch.float32
    kw = cfg.to_transformers()
    n = cfg.num_mtp_layers
    config = HYV3Config(**kw)
    config._attn_implementation = "eager"
    ext = HYV3Config(**dict(kw, num_hidden_layers=cfg.num_layers + n,
                            mlp_layer_types=list(cfg.layer_types) + ["sparse"] * n))
    with no_init_weights():  # every value is read below
        model = HYV3ForCausalLM(config).to(dtype)
        # the attention and experts kernels the model chose (a bare layer does not choose)
        ext._attn_implementation = model.config._attn_implementation
        ext._experts_implementation = model.config._experts_implementation
        mtp = [HYV3DecoderLayer(ext, cfg.num_layers + k).to(dtype) for k in range(n)]
    targets = dict(model.state_dict())
    for k, layer in enumerate(mtp):
        targets.update({LAYER.format(i=cfg.num_layers + k) + name: t for name, t in layer.state_dict().items()})
    filled = dict.fromkeys(targets, 0)
    with torch.no_grad():
        for t in logical_tensors(cfg):
            if t.spec.scope == "mtp":
                continue  # eh_proj, enorm, hnorm, final_layernorm: the MTP forward below reads them
            dst = targets.get(t.outer_key)
            if dst is None:
                raise Hy3Error(f"transformers' HYV3ForCausalLM has no tensor {t.outer_key} for {t.name}")
            src = read(t.name)
            span = t.outer_slice(cfg)
            if span is None:
                dst.copy_(src.reshape(dst.shape))
            else:
                dst.view(-1)[span[0]:span[1]].copy_(src.reshape(-1))
            filled[t.outer_key] += src.numel()
    short = [k for k, v in targets.items() if filled[k] != v.numel()]
    if short:
        raise Hy3Error(f"transformers' HYV3ForCausalLM tensor {short[0]}: {filled[short[0]]} of "
                       f"{targets[short[0]].numel()} values read from the checkpoint")
    return model.eval(), [m.eval() for m in mtp]


def reference_logits(path: str | Path, tokens, dtype=None, layers=None, say=None) -> tuple:
    """(logits [b, s, V], [MTP logits per depth]) for integer tokens [b, s].

    layers: the checkpoint's decoder layers (0-based) of the model, with the embedding, final norm, output
    layer and MTP layers (mapping.LayerSubset); only their tensors are read. None: the whole checkpoint,
    through transformers' from_pretrained.
    """
    import torch

    say = say or (lambda msg: None)
    ck = HFCheckpoint(path)
    if layers is None:
        cfg, read = ck.config, ck.read
        model = load_hf_model(path, dtype=dtype)
        mtp = []
        if cfg.num_mtp_layers:
            ext = load_hf_model(path, extra_layers=cfg.num_mtp_layers, dtype=dtype)
            mtp = [ext.model.layers[cfg.num_layers + k] for k in range(cfg.num_mtp_layers)]
    else:
        subset = LayerSubset(ck.config, layers)
        cfg, read = subset.config, subset.reader(ck.read)
        say(f"transformers reference: reading {len(subset.layers)} decoder layers"
            f"{f' + {cfg.num_mtp_layers} MTP' if cfg.num_mtp_layers else ''} from {path}")
        model, mtp = build_reference(cfg, read, dtype)
    say("transformers reference: forward")
    with torch.no_grad():
        h = model.model(input_ids=tokens).last_hidden_state
        logits = model.lm_head(h)
        return logits, mtp_logits(model, mtp, cfg, read, tokens, h)


def mtp_logits(model, mtp: list, cfg: Hy3Config, read: Callable[[str], object], tokens, h) -> list:
    """The MTP depths' logits, from the main model's output h (after its final norm)."""
    import torch

    out = []
    d = h.dtype
    positions = torch.arange(tokens.shape[1])[None].expand(tokens.shape[0], -1)
    mask = _causal_additive(tokens.shape[1], d)
    cos_sin = model.model.rotary_emb(h, positions)
    ids = tokens
    for k, layer in enumerate(mtp):
        i = cfg.num_layers + k
        w = {t.spec.inner: read(t.name).to(d) for t in logical_tensors(cfg) if t.layer == i and t.spec.scope == "mtp"}
        ids = torch.roll(ids, -1, dims=-1)
        ids[..., -1] = 0
        e = _rms(model.model.embed_tokens(ids), w[MTP_ENORM], cfg.rms_norm_eps)
        x = torch.cat([e, _rms(h, w[MTP_HNORM], cfg.rms_norm_eps)], -1) @ w[MTP_EH_PROJ].T
        x = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=cos_sin)
        h = _rms(x, w[MTP_NORM], cfg.rms_norm_eps)
        out.append(model.lm_head(h))
    return out


def _causal_additive(seq: int, dtype):
    import torch

    return torch.full((seq, seq), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def _rms(x, weight, eps: float):
    """RMSNorm exactly as transformers' HYV3RMSNorm computes it."""
    import torch

    dtype = x.dtype
    y = x.to(torch.float32)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return weight * y.to(dtype)
