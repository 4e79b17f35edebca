"""ms-swift's and mcore-bridge's own Megatron code on a tiny Hy3, on CPU (driver for test_swift_megatron.py).

    python tests/swift_jobs.py SPEC.json RESULT.pt

runs, for each layout in the spec (TP1, TP2, EP2: real gloo processes), what `megatron sft` and
`megatron export` do with our plugin: mcore-bridge builds the model (transformer-engine spec, grouped
experts) from config.json, `bridge.load_weights` reads the HF checkpoint (inner and outer),
ms-swift's `load_mcore_checkpoint` reads our torch_dist, ms-swift's `save_mcore_checkpoint` and
`bridge.save_weights` write, mcore-bridge's LoRA tuner makes an adapter that ms-swift saves in both
its formats, and mcore-bridge merges it. Every rank reports what it saw; the tests judge it.
The process needs tests/ and tests/te_standin on PYTHONPATH (the test sets it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


# --- ms-swift's argument object, from its own defaults ---------------------------------------------

def swift_args(**overrides):
    """A namespace with every MegatronSftArguments default (read from ms-swift's dataclass), the fields
    its __post_init__ derives that the functions used here read, and the run's settings.
    (MegatronSftArguments itself cannot be built here: its __post_init__ initializes CUDA.)"""
    from dataclasses import MISSING, fields
    from types import SimpleNamespace

    import torch
    from megatron.core.transformer.enums import AttnBackend
    from mcore_bridge.model import get_mcore_model_type, get_model_meta
    from swift.megatron.arguments import MegatronSftArguments

    import swift_harness

    base = {}
    for f in fields(MegatronSftArguments):
        if f.default is not MISSING:
            base[f.name] = f.default
        elif f.default_factory is not MISSING:
            base[f.name] = f.default_factory()
    args = SimpleNamespace(**base)
    dtype = overrides.pop("torch_dtype", torch.bfloat16)
    args.__dict__.update(
        model_type="hy_v3", megatron_model_meta=get_model_meta(get_mcore_model_type("hy_v3")), torch_dtype=dtype,
        bf16=dtype == torch.bfloat16, fp16=False, attention_backend=AttnBackend.unfused, moe_grouped_gemm=True,
        megatron_extra_kwargs=dict(swift_harness.CPU_MODEL_KWARGS), no_save_optim=True, no_save_rng=True,
        finetune=True, recompute_granularity=None, sequence_parallel=False, is_multimodal=False)
    args.__dict__.update(overrides)
    return args


def build(args, hf_dir: str):
    """ms-swift's model builder (swift.megatron.model.get_mcore_model) for this checkpoint's config."""
    from swift.megatron.model import get_mcore_model
    from transformers import AutoConfig

    args.model_dir = hf_dir
    return get_mcore_model(args, AutoConfig.from_pretrained(hf_dir))[0]


# --- what a rank reports ----------------------------------------------------------------------------

def describe(model) -> dict:
    """The built model as facts: ShardedTensor keys with global shapes, layer kinds, q/k norm, MTP, router."""
    from megatron.core.transformer.identity_op import IdentityOp

    from megatron_hy.megatron.weights import model_sharded_state_dict, sharded_tensors

    c = model.config
    layers = list(model.decoder.layers) + [m.transformer_layer for m in getattr(getattr(model, "mtp", None), "layers", [])]
    routers = [l.mlp.router for l in layers if hasattr(l.mlp, "router")]
    return {
        "tensors": {st.key: tuple(st.global_shape) for st in sharded_tensors(model_sharded_state_dict(model))},
        "layer_kinds": ["moe" if hasattr(l.mlp, "experts") else "dense" for l in model.decoder.layers],
        "qk_norm": all(not isinstance(l.self_attention.q_layernorm, (IdentityOp, type(None))) and
                       not isinstance(l.self_attention.k_layernorm, (IdentityOp, type(None))) for l in layers),
        "mtp_layers": len(model.mtp.layers) if getattr(model, "mtp", None) is not None else 0,
        "router": sorted({(r.config.moe_router_score_function, r.expert_bias is not None, r.topk,
                           float(r.config.moe_router_topk_scaling_factor or 0)) for r in routers}),
        "config": {k: getattr(c, k) for k in ("qk_layernorm", "moe_ffn_hidden_size", "moe_shared_expert_intermediate_size",
                                               "rotary_base", "untie_embeddings_and_output_weights", "mtp_num_layers",
                                               "moe_router_bias_update_rate", "moe_router_load_balancing_type",
                                               "moe_aux_loss_coeff", "moe_router_pre_softmax")},
        "modules": sorted({type(m).__name__ for m in model.modules() if type(m).__module__.startswith("megatron.core.ext")}),
    }


def snapshot(model) -> dict:
    """This rank's parameters and buffers (no `_extra_state`), as byte tensors."""
    out = {}
    for k, v in model.state_dict(keep_vars=False).items():
        if k.endswith("_extra_state") or v is None:
            continue
        out[k] = (str(v.dtype), tuple(v.shape), v.detach().contiguous().view(-1).view(__import__("torch").uint8).clone())
    return out


def diff(a: dict, b: dict) -> list[str]:
    import torch

    bad = sorted(set(a) ^ set(b))
    bad += [k for k in sorted(set(a) & set(b)) if a[k][:2] != b[k][:2] or not torch.equal(a[k][2], b[k][2])]
    return bad


def fill_lora(model, seed: int) -> int:
    """Give every LoRA factor a deterministic nonzero value (as training would), consistent across ranks:
    each global tensor is drawn from its checkpoint key and every rank copies in its own region."""
    import torch

    from megatron_hy.megatron.weights import local_region, model_sharded_state_dict, sharded_tensors

    n = 0
    with torch.no_grad():
        for st in sharded_tensors(model_sharded_state_dict(model)):
            if ".lora_A." not in st.key and ".lora_B." not in st.key:
                continue
            digest = int(hashlib.sha256(st.key.encode()).hexdigest()[:8], 16)
            gen = torch.Generator().manual_seed(seed + digest)
            full = torch.randn(st.global_shape, generator=gen) * (0.5 / st.global_shape[-1] ** 0.5)
            pre, slices = local_region(st)
            st.data.copy_(full[pre + slices].reshape(st.data.shape).to(st.data.dtype))
            n += 1
    return n


# --- one layout ----------------------------------------------------------------------------------------

def run_layout(rank: int, world: int, spec: dict) -> dict:
    import swift_harness

    swift_harness.setup()
    out = Path(spec["out"])
    tp, ep = spec["tp"], spec["ep"]
    parallel = dict(tensor_model_parallel_size=tp, expert_model_parallel_size=ep, pipeline_model_parallel_size=1)
    res: dict = {"rank": rank}

    import swift.megatron  # noqa: F401  (ms-swift's Megatron environment patches, as `megatron sft` imports)
    from swift.megatron.init import _patch_mcore_bridge
    from swift.megatron.utils.megatron_lm_utils import _initialize_mpu

    if spec.get("unpatched"):
        # mcore-bridge's own hy_v3 registration, before the plugin replaces it: what users get today
        _initialize_mpu(swift_args(**parallel))
        res["unpatched"] = describe(build(swift_args(**parallel), spec["inner"]))
    from swift.utils import import_external_file

    import_external_file(spec["plugin"])      # what --custom_register_path does
    _patch_mcore_bridge()                      # what ms-swift's argument parsing does for mcore-bridge
    from swift.megatron.utils import prepare_mcore_model
    from swift.megatron.utils.megatron_lm_utils import load_mcore_checkpoint, save_mcore_checkpoint

    _initialize_mpu(swift_args(**parallel))

    # 1. the builder, from either spelling of config.json
    res["built"] = {name: describe(build(swift_args(**parallel), spec[name])) for name in ("inner", "tencent")}

    # 2. HF -> Megatron: mcore-bridge's load_weights (inner, outer) and our torch_dist through ms-swift's loader
    ref = build(swift_args(**parallel), spec["inner"])
    ref.config.bridge.load_weights([ref], spec["inner"])
    base = snapshot(ref)
    res["n_tensors"] = len(base)
    outer_model = build(swift_args(**parallel), spec["outer"])
    outer_model.config.bridge.load_weights([outer_model], spec["outer"])
    loaded = {"bridge:outer": diff(base, snapshot(outer_model))}
    for name, mc in spec["mcore"].items():
        m = build(swift_args(**parallel), spec["inner"])
        load_mcore_checkpoint(swift_args(**parallel, mcore_model=mc), [m], load_arg="mcore_model")
        loaded[f"torch_dist:{name}"] = diff(base, snapshot(m))
    res["loaded"] = loaded

    # 3. Megatron -> disk: ms-swift's torch_dist save, mcore-bridge's HF export (`--to_hf`), both layouts
    from swift.model import get_model_processor

    save = out / "swift-save"
    save_mcore_checkpoint(swift_args(**parallel, output_dir=str(save)), [ref], iteration=1, output_dir=str(save))
    for name, model in (("inner", ref), ("outer", outer_model)):
        eargs = swift_args(**parallel, model_dir=spec[name])
        processor = get_model_processor(spec[name], load_model=False)[1]
        model.config.bridge.save_weights([model], str(out / f"export-{name}"), args=eargs, processor=processor)
    # ... from a checkpoint whose router expert bias is bf16: loaded from HF, and from our torch_dist (what
    # `megatron export --to_hf --mcore_model` does), the export must give every tensor its source dtype
    if spec.get("bf16_bias"):
        b = spec["bf16_bias"]
        for name in ("hf", "mcore"):
            m = build(swift_args(**parallel), b["hf"])
            if name == "hf":
                m.config.bridge.load_weights([m], b["hf"])
            else:
                load_mcore_checkpoint(swift_args(**parallel, mcore_model=b["mcore"]), [m], load_arg="mcore_model")
            eargs = swift_args(**parallel, model_dir=b["hf"])
            processor = get_model_processor(b["hf"], load_model=False)[1]
            m.config.bridge.save_weights([m], str(out / f"export-bf16-bias-{name}"), args=eargs, processor=processor)

    # 4. LoRA as ms-swift trains it: mcore-bridge's tuner, nonzero factors, ms-swift's two savers,
    #    mcore-bridge's merge exported to HF (`megatron export --merge_lora true --to_hf true`)
    if spec.get("lora"):
        res.update(_lora(spec["lora"], parallel, out / "lora", rank))
    if spec.get("zero_adapter_base"):
        # an adapter straight from mcore-bridge's tuner (lora_B starts at zero), saved by ms-swift
        largs = swift_args(**parallel, **_lora_args(["all-linear", "all-router"]))
        m = build(largs, spec["zero_adapter_base"])
        save_mcore_checkpoint(largs, [prepare_mcore_model(largs, m)], iteration=1,
                              output_dir=str(out / "zero-adapter"), peft_format=True)
        if rank == 0:
            (out / "zero-adapter" / "args.json").write_text(json.dumps(_json_args(largs), indent=2))
    if spec.get("conflicts"):
        res["conflicts"] = _conflicts(spec, parallel)
    return res


def _lora_args(targets):
    import torch

    return dict(tuner_type="lora", lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(targets),
                torch_dtype=torch.float32)


def _lora(spec: dict, parallel: dict, out: Path, rank: int) -> dict:
    from swift.megatron.utils import prepare_mcore_model
    from swift.megatron.utils.megatron_lm_utils import save_mcore_checkpoint
    from swift.model import get_model_processor

    largs = swift_args(**parallel, **_lora_args(spec["targets"]))
    m = build(largs, spec["base"])
    bridge = m.config.bridge
    bridge.load_weights([m], spec["base"])
    peft_model = prepare_mcore_model(largs, m)
    res = {"lora_factors": fill_lora(peft_model, seed=17),
           "lora_targets": sorted({n.split(".lora_A.")[0].split(".")[-1] for n, _ in peft_model.named_parameters()
                                   if ".lora_A." in n})}
    save_mcore_checkpoint(largs, [peft_model], iteration=1, output_dir=str(out / "dist"), peft_format=True)
    processor = get_model_processor(spec["base"], load_model=False)[1]
    bridge.save_weights([peft_model], str(out / "safetensors"), peft_format=True, args=largs, processor=processor)
    if rank == 0:
        for d in ("dist", "safetensors"):   # ms-swift's trainer writes args.json into the run directory
            (out / d / "args.json").write_text(json.dumps(_json_args(largs), indent=2))
    merged = peft_model.merge_and_unload()
    bridge.save_weights([merged], str(out / "merged"))
    return res


def _conflicts(spec: dict, parallel: dict) -> dict:
    """What the plugin does with model settings given on the command line."""
    found = {}
    for name, hf, extra in (("qk_layernorm", "tencent", {"qk_layernorm": False}),
                            ("moe_ffn", "inner", {"moe_ffn_hidden_size": 48})):
        args = swift_args(**parallel)
        args.megatron_extra_kwargs.update(extra)
        try:
            build(args, spec[hf])
            found[name] = None
        except Exception as e:
            found[name] = f"{type(e).__name__}: {e}"
    no_mtp = build(swift_args(**parallel, mtp_num_layers=0), spec["inner"])
    found["mtp_off"] = getattr(no_mtp, "mtp", None) is None and no_mtp.config.mtp_num_layers is None
    return found


def _json_args(args) -> dict:
    """args.json as ms-swift's `save_args` writes it (the JSON-able fields of the run's arguments)."""
    from swift.utils import check_json_format

    return check_json_format({k: v for k, v in vars(args).items() if k != "megatron_model_meta"})


# --- the test side: inputs, one driver process, results ---------------------------------------------------

@dataclass
class SwiftRun:
    root: Path
    mcore: dict          # our `hy3 convert hf-to-mcore` outputs, by source layout
    results: dict        # layout -> [per-rank report] or the error text

    def ranks(self, layout: str) -> list:
        r = self.results[layout]
        if isinstance(r, str):
            raise AssertionError(f"the {layout} run of ms-swift/mcore-bridge failed:\n{r}")
        return r

    def out(self, layout: str) -> Path:
        return self.root / layout


def run_all(root: Path, inner: Path, outer: Path, tencent: Path, lora_base: Path, timeout: float = 900) -> SwiftRun:
    """Convert the tiny checkpoints with `hy3 convert hf-to-mcore`, then run the TP1, TP2 and EP2 layouts
    in one driver process (with the transformer_engine stand-in on its path)."""
    from megatron_hy.swift.plugin import swift_plugin_path
    from megatron_hy.tiny import TinySpec, write_tiny

    root = Path(root)
    bf16_bias = write_tiny(root / "bf16-bias", TinySpec(layers=2), "inner", seed=5, bias_dtype="bf16")
    mcore = {}
    for name, src in (("inner", inner), ("outer", outer), ("bf16-bias", bf16_bias)):
        mcore[name] = root / f"mcore-{name}"
        proc = subprocess.run([sys.executable, "-m", "megatron_hy.cli", "convert", "hf-to-mcore", str(src),
                               str(mcore[name]), "--quiet"], capture_output=True, text=True, cwd=REPO, timeout=300)
        if proc.returncode:
            raise AssertionError(f"hy3 convert hf-to-mcore {src} failed:\n{proc.stderr}")
    common = {"plugin": str(swift_plugin_path()), "inner": str(inner), "outer": str(outer), "tencent": str(tencent),
              "mcore": {k: str(v) for k, v in mcore.items() if k != "bf16-bias"},
              "bf16_bias": {"hf": str(bf16_bias), "mcore": str(mcore["bf16-bias"])}}
    all_linear = {"base": str(lora_base), "targets": ["all-linear"]}
    with_router = {"base": str(lora_base), "targets": ["all-linear", "all-router"]}
    jobs = [dict(common, name="tp1", tp=1, ep=1, world=1, unpatched=True, conflicts=True, lora=all_linear,
                 zero_adapter_base=str(inner)),
            dict(common, name="tp2", tp=2, ep=1, world=2, lora=with_router),
            dict(common, name="ep2", tp=1, ep=2, world=2, lora=with_router)]
    for j in jobs:
        j["out"] = str(root / j["name"])
    spec, result = root / "spec.json", root / "results.pt"
    spec.write_text(json.dumps({"jobs": jobs}, indent=2))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS / "te_standin"), str(TESTS), str(REPO)]),
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, str(Path(__file__)), str(spec), str(result)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=timeout)
    if proc.returncode or not result.exists():
        raise AssertionError(f"swift_jobs.py exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    import torch

    return SwiftRun(root, mcore, torch.load(result, weights_only=False))


def main(spec_path: str, result_path: str) -> None:
    import torch

    from megatron_hy.megatron.harness import run_distributed

    spec = json.loads(Path(spec_path).read_text())
    results = {}
    for job in spec["jobs"]:
        Path(job["out"]).mkdir(parents=True, exist_ok=True)
        try:
            results[job["name"]] = run_distributed(run_layout, job["world"], job, timeout=600)
        except Exception as e:  # reported per layout; the tests of that layout fail with it
            results[job["name"]] = f"{type(e).__name__}: {e}"
    torch.save(results, result_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
