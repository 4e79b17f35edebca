"""`hy3 lora export-peft`: an adapter (any format) as a PEFT adapter for transformers' HYV3ForCausalLM.

Module names are transformers' (`self_attn.q_proj`, `mlp.gate_proj`, `mlp.shared_experts.*`). Routed
experts are fused 3D parameters there, so their LoRA goes through PEFT's `target_parameters`
(one ParamWrapper per 3D tensor; expert e uses rows e*r..(e+1)*r of lora_A and columns k*E+e of
lora_B). Megatron shares lora_A between gate and up, which keeps rank r for `gate_up_proj`; when they
differ, rank 2r with block-diagonal lora_B holds both. Everything is written with use_rslora false and
alpha = scaling * rank, so PEFT applies exactly the scaling the adapter was trained with.

Targets with no PEFT equivalent on HYV3ForCausalLM (the MTP layer, which transformers does not build;
the router, which is not a Linear) are listed by name, never dropped silently; --strict makes them an error.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from .. import __version__
from ..errors import Hy3Error
from ..formats.adapters import open_adapter
from ..formats.hf_checkpoint import HFCheckpoint
from ..formats.staging import new_dir
from ..mapping import fused_rows, fused_shape, fused_specs, LAYER, Logical, logical_tensors, PEFT_PREFIX, ROUTER
from ..outputs import ADAPTER, check_dir
from ..progress import log


def _module(t: Logical) -> str:
    """A logical (Tencent) tensor -> its transformers module name (the outer layout's spelling)."""
    return t.outer_key[: -len(".weight")]


def export_peft(adapter_dir: str | Path, base_dir: str | Path, out: str | Path, rslora: str = "auto",
                strict: bool = False, overwrite: bool = False, quiet: bool = False) -> dict:
    base = HFCheckpoint(base_dir)
    cfg = base.config
    adapter = open_adapter(adapter_dir, cfg, rslora)
    for note in adapter.notes:
        log(f"note: {note}", quiet)
    out = Path(out)
    inputs = [adapter_dir, base.root, *base.files()]
    check_dir(out, ADAPTER, inputs, overwrite)

    tensors, modules, params, ranks, skipped = _peft_tensors(cfg, adapter)
    if skipped:
        msg = "no PEFT equivalent on HYV3ForCausalLM for " + "; ".join(skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        if strict:
            raise Hy3Error(f"{adapter_dir}: {msg}")
        log(f"warning: not exported, {msg}", quiet)
    if not tensors:
        raise Hy3Error(f"{adapter_dir}: nothing to export: every LoRA target lacks a PEFT equivalent")

    rank, scaling = Counter(ranks.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(Path(base_dir).resolve()),
        "r": rank, "lora_alpha": scaling * rank, "use_rslora": False, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "target_modules": sorted(modules), "target_parameters": sorted(params) or None,
        "rank_pattern": {k: r for k, (r, s) in ranks.items() if (r, s) != (rank, scaling)},
        "alpha_pattern": {k: s * r for k, (r, s) in ranks.items() if (r, s) != (rank, scaling)},
        "auto_mapping": {"base_model_class": "HYV3ForCausalLM",
                         "parent_library": "transformers.models.hy_v3.modeling_hy_v3"},
    }
    report = {"source": str(Path(adapter_dir).resolve()), "format": adapter.kind, "created_by": f"megatron-hy {__version__}",
              "scaling": adapter.scaling, "exported_modules": len(modules), "exported_parameters": len(params),
              "not_exported": skipped, "notes": adapter.notes}
    with new_dir(out, ADAPTER, inputs, overwrite) as tmp:
        _write(tmp, tensors, config, report)
    log(f"wrote {out}: PEFT adapter with {len(modules)} modules and {len(params)} expert parameters "
        f"(rank {rank}, scaling {scaling:g})" + (f"; {len(skipped)} targets not exported" if skipped else ""), quiet)
    return report


def _peft_tensors(cfg, adapter) -> tuple[dict, list, list, dict, list]:
    """(PEFT tensors, target modules, target parameters, module or parameter -> (rank, scaling), targets skipped)."""
    tensors: dict = {}
    modules: list[str] = []
    params: list[str] = []
    ranks: dict[str, tuple[int, float]] = {}
    skipped: list[str] = []
    # layer -> expert row (its inner name pattern) -> expert -> factors
    experts: dict[int, dict[str, dict[int, object]]] = defaultdict(lambda: defaultdict(dict))
    logical = {t.name: t for t in logical_tensors(cfg)}
    for name in adapter.targets():
        t = logical[name]
        layer = t.layer
        if layer is not None and layer >= cfg.num_layers:
            skipped.append(f"{name} (MTP layer {layer}: HYV3ForCausalLM has no MTP module)")
            continue
        if t.spec.inner == ROUTER:
            skipped.append(f"{name} (the router is not a Linear module in HYV3ForCausalLM)")
            continue
        if t.expert is not None:
            experts[layer][t.spec.inner][t.expert] = adapter.factors(name)
            continue
        f = adapter.factors(name)
        module = _module(t)
        # PEFT keeps one lora_A per module, even where Megatron shares it (q/k/v, gate/up)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = f.A.clone()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = f.B.clone()
        modules.append(module)
        ranks[module] = (f.A.shape[0], _scaling_of(adapter, name))
    for layer, projs in sorted(experts.items()):
        _export_experts(cfg, adapter, layer, projs, tensors, params, ranks)
    return tensors, modules, params, ranks, skipped


def _write(tmp: Path, tensors: dict, config: dict, report: dict) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({k: v.to(torch.float32).contiguous() for k, v in tensors.items()}, str(tmp / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (tmp / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")


def _scaling_of(adapter, name: str) -> float:
    pairs = getattr(adapter, "pairs", None)
    return pairs[name][1] if pairs else adapter.scaling


def _export_experts(cfg, adapter, layer: int, projs: dict, tensors: dict, params: list, ranks: dict) -> None:
    """HYV3Experts' 3D tensors through PEFT ParamWrapper: with two, the first defined (gate_up_proj) inner, the
    other outer. One lora_A for the expert rows a fused tensor stacks when they share it (gate and up, as Megatron
    trains them), else one block of rank r each, with block-diagonal lora_B."""
    import torch

    E, prefix = cfg.num_experts, LAYER.format(i=layer)
    built = {}
    for key, specs in fused_specs().items():
        got = [projs.get(t.inner, {}) for t in specs]
        if not any(got):
            continue
        _, rows, cols = fused_shape(key, cfg)
        r = max(f.A.shape[0] for g in got for f in g.values())
        shared = all(e in g and torch.equal(got[0][e].A, g[e].A) for g in got for e in range(E))
        rank = r if shared else len(specs) * r
        A = torch.zeros(E, rank, cols)
        B = torch.zeros(rows, rank, E)
        for e in range(E):
            for k, (t, g) in enumerate(zip(specs, got)):
                if shared:
                    A[e], B[fused_rows(t, cfg), :, e] = g[e].A, g[e].B
                elif e in g:
                    A[e, k * r:(k + 1) * r], B[fused_rows(t, cfg), k * r:(k + 1) * r, e] = g[e].A, g[e].B
        first = next(k for k, g in enumerate(got) if g)
        scaling = _scaling_of(adapter, prefix + specs[first].inner.format(e=next(iter(got[first]))))
        built[prefix + key] = (A.reshape(E * rank, cols), B.reshape(rows, rank * E), rank, scaling)
    for i, (param, (A, B, rank, scaling)) in enumerate(built.items()):
        # PEFT nests one ParamWrapper per targeted parameter, the first defined innermost
        key = PEFT_PREFIX + param.rsplit(".", 1)[0] + ".base_layer" * (len(built) - 1 - i)
        tensors[f"{key}.lora_A.weight"] = A
        tensors[f"{key}.lora_B.weight"] = B
        params.append(param)
        ranks[param] = (rank, scaling)
