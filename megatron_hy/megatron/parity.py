"""`hy3 verify parity`: the Megatron Hy3 model, loaded through the mapping table under a parallel
layout on GPUs or a CPU, against transformers' HYV3ForCausalLM and the reference MTP.

The model is the whole checkpoint, or some of its decoder layers (plus embedding, final norm, output layer
and MTP layers: mapping.LayerSubset), built the same way on both sides.

fp32: relative error max|megatron - reference| / max|reference| over all logits of an output, at most
TOLERANCE. bf16 (the Megatron model cast as megatron-core's Float16Module casts it, against the fp32
reference): that ratio is reported but not judged (the same real-width weights gave 0.17 in bf16); judged are
top-1 agreement (the share of positions whose largest logit is the reference's) and the cosine similarity of
each position's logits, centered on their mean, averaged over positions, against the bounds below. The
minimum cosine over positions is reported, not judged: a token whose expert choice flips under bf16
rounding (a near tie in the router) can differ a lot on its own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import load_config
from ..errors import Hy3Error
from ..formats.adapters import open_adapter
from ..formats.hf_checkpoint import HFCheckpoint
from ..mapping import keeps_dtype, LayerSubset
from ..progress import log
from ..reference import reference_logits
from .config import check_supported, padded_vocab_size
from .device import check_device, default_device, DTYPES, model_inputs, model_settings, place_model
from .device import seed_model_parallel, spec_name, uses_te
from .harness import init_parallel, parallel_config, run_distributed
from .model import build_gpt_model, make_transformer_config
from .weights import add_lora_delta, check_tp_axes, export_pieces, load_into_model, load_mcore_into_model

TOLERANCE = 1e-5
BF16_MIN_TOP1 = 0.85
BF16_MIN_MEAN_COSINE = 0.98


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    etp: int | None = None
    dp: int = 1
    vpp: int | None = None  # virtual pipeline stages (model chunks) per pipeline rank

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def chunks(self) -> int:
        return self.vpp or 1

    def __str__(self) -> str:
        s = f"TP{self.tp} PP{self.pp}" + (f" VPP{self.vpp}" if self.vpp else "") + f" EP{self.ep}"
        if self.etp is not None and self.etp != self.tp:
            s += f" ETP{self.etp}"
        return s + (f" DP{self.dp}" if self.dp > 1 else "")


def make_layout(tp=1, pp=1, ep=1, etp=None, cfg=None, vpp=None) -> Layout:
    """The smallest world that holds this layout: EP lives inside DP x TP / ETP (Megatron's rule)."""
    etp_ = tp if etp is None else etp
    for v, name in ((tp, "--tp"), (pp, "--pp"), (ep, "--ep"), (etp_, "--etp"), (vpp or 1, "--vpp")):
        if v < 1:
            raise Hy3Error(f"{name} must be at least 1, got {v}")
    vpp = vpp if vpp and vpp > 1 else None
    if vpp and pp < 2:
        raise Hy3Error(f"--vpp {vpp} needs pipeline parallelism: --pp must be at least 2, got {pp}")
    dp = 1
    while (tp * dp) % (ep * etp_):
        dp += 1
    lay = Layout(tp, pp, ep, etp, dp, vpp)
    if cfg is not None:
        _check_layout(lay, cfg)
    return lay


def _check_layout(lay: Layout, cfg) -> None:
    etp = lay.tp if lay.etp is None else lay.etp
    problems = []
    if cfg.num_heads % lay.tp or cfg.num_kv_heads % lay.tp:
        problems.append(f"TP {lay.tp} must divide the attention heads ({cfg.num_heads}) and query groups ({cfg.num_kv_heads})")
    if cfg.num_experts % lay.ep:
        problems.append(f"EP {lay.ep} must divide the number of experts ({cfg.num_experts})")
    if cfg.num_layers % (lay.pp * lay.chunks):
        stages = f"PP {lay.pp} x VPP {lay.vpp} = {lay.pp * lay.chunks}" if lay.vpp else f"PP {lay.pp}"
        problems.append(f"{stages} must divide the number of decoder layers ({cfg.num_layers})")
    for name, size in (("ffn", cfg.intermediate_size), ("shared expert ffn", cfg.shared_ffn)):
        if size % lay.tp:
            problems.append(f"TP {lay.tp} must divide the {name} size ({size})")
    if cfg.moe_ffn % etp:
        problems.append(f"ETP {etp} must divide the expert ffn size ({cfg.moe_ffn})")
    if problems:
        raise Hy3Error("layout " + str(lay) + " does not fit this model: " + "; ".join(problems))


@dataclass
class ParityJob:
    config_dir: str          # HF checkpoint whose config.json defines the model
    sources: list            # ("hf", dir) or ("mcore", dir): weights loaded into the same model in turn
    layout: Layout
    tokens: list
    padded_vocab: int
    export: bool = False
    layers: tuple | None = None  # the checkpoint's decoder layers to build (0-based); None: all of them
    device: str = "cpu"
    dtype: str = "fp32"      # the Megatron model's; the reference is fp32
    quiet: bool = True       # progress lines on stderr (rank 0 and the caller)
    started: float = field(default_factory=time.time)

    def subset(self, cfg):
        return LayerSubset(cfg, self.layers if self.layers is not None else range(cfg.num_layers))

    def say(self, msg: str) -> None:
        if not self.quiet:
            log(f"verify parity [{time.time() - self.started:5.1f}s] {msg}")


def rank_main(rank: int, world: int, job: ParityJob) -> dict:
    """One rank: parallel state, this rank's model chunks, then per source: weights, forward, (export)."""
    import torch
    from megatron.core import parallel_state as ps

    lay = job.layout
    say = job.say if rank == 0 else (lambda msg: None)
    init_parallel(lay.tp, lay.pp, lay.ep, lay.etp, lay.vpp)
    seed_model_parallel(job.device)
    subset = job.subset(load_config(job.config_dir))
    cfg = subset.config
    use_te = uses_te(job.device)
    tconfig = make_transformer_config(cfg, **model_settings(job.device, job.dtype, use_te),
                                      **parallel_config(lay.tp, lay.pp, lay.ep, lay.etp, lay.vpp))
    say(f"rank 0/{world}: building the model ({cfg.num_layers} decoder layers"
        f"{f' + {cfg.num_mtp_layers} MTP' if cfg.num_mtp_layers else ''}, {spec_name(use_te)} spec, {job.dtype}, "
        f"{job.device})")
    chunks = [place_model(job.device, build_gpt_model(cfg, tconfig, padded_vocab=job.padded_vocab, use_te=use_te,
                                                      vp_stage=v if lay.vpp else None)) for v in range(lay.chunks)]
    for m in chunks:
        m.eval()
        check_tp_axes(m, cfg, job.padded_vocab)
    runners = as_bf16(chunks, tconfig) if job.dtype == "bf16" else chunks
    owner = (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
             and ps.get_data_parallel_rank() == 0)
    tokens = torch.tensor(job.tokens, dtype=torch.long)
    # decoder layer numbers (1-based, global) of each chunk: with VPP, megatron-core interleaves them
    out: dict = {"rank": rank, "sources": [], "layers": [[l.layer_number for l in m.decoder.layers] for m in chunks],
                 "spec": spec_name(use_te)}

    def loading(what: str):
        return lambda done, total: say(f"rank 0/{world}: loading weights from {what}: {done}/{total} layers")

    for kind, path in job.sources:
        if kind == "mcore":
            say(f"rank 0/{world}: loading weights from torch_dist {path} (megatron-core dist_checkpointing.load)")
            load_mcore_into_model(chunks, path, rename=None if subset.is_whole else subset.mcore_key)
        elif kind == "hf+lora":  # (base HF dir, adapter dir): base weights plus the delta in Megatron layout
            base, adapter = path
            for m in chunks:
                load_into_model(m, cfg, HFCheckpoint(base).read, job.padded_vocab, progress=loading("HF " + base))
                add_lora_delta(m, cfg, open_adapter(adapter, cfg), job.padded_vocab)
        else:
            read = subset.reader(HFCheckpoint(path).read)
            for m in chunks:
                load_into_model(m, cfg, read, job.padded_vocab, progress=loading("HF " + path))
        say(f"rank 0/{world}: Megatron forward ({len(job.tokens)} x {len(job.tokens[0])} tokens)")
        with count_routed_tokens(chunks) as routed:
            logits, mtp = forward(runners, tokens, cfg.num_mtp_layers, job.device)
        res: dict = {}
        if owner:
            res["logits"] = logits[..., : cfg.vocab_size].float().cpu().numpy()
            res["mtp"] = [m[..., : cfg.vocab_size].float().cpu().numpy() for m in mtp]
        if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
            res["routed"] = routed  # every pipeline stage's MoE layers, counted once
        if job.export:
            res["pieces"] = [p for m in chunks for p in export_pieces(m)]
        out["sources"].append(res)
    out["param_dtypes"] = sorted({str(p.dtype) for m in chunks for p in m.parameters()})
    out["expert_bias_dtypes"] = sorted({str(b.dtype) for m in chunks for n, b in m.named_buffers()
                                        if keeps_dtype(n)})
    return out


def as_bf16(chunks: list, tconfig) -> list:
    """The chunks wrapped as megatron-core's training wraps them for bf16 (Megatron-LM `get_model`):
    Float16Module, which casts every parameter and buffer to bf16 in place, RMSNorm weights included.
    The wrapped chunks are still `chunks` (load weights into those); the router keeps its expert bias in fp32
    (megatron-core's TopKRouter switches it back when its state dict is read or loaded, and in its forward)."""
    from megatron.core.transformer.module import Float16Module

    return [Float16Module(tconfig, m) for m in chunks]


class count_routed_tokens:
    """Within the block: tokens megatron-core's router sent to each routed expert, per MoE layer.

    Gives {layer number: [tokens per expert]}: a decoder layer's global number (from 1), and the MTP layer of
    depth k (from 0) numbered num_layers + 1 + k, after the decoder's. megatron-core's own numbering of MTP
    layers differs between releases (mcore_versions.MTP_LAYER_RENAMED), so MTP routers are labelled by place.
    """

    def __init__(self, chunks):
        from megatron.core.transformer.moe.router import TopKRouter

        self.labels = {}
        for m in chunks:
            for name, r in m.named_modules():
                if isinstance(r, TopKRouter):
                    parts = name.split(".")   # [module.]mtp.layers.K.... under a Float16Module too
                    mtp = parts.index("mtp") if "mtp" in parts else None
                    self.labels[r] = r.layer_number if mtp is None else m.config.num_layers + 1 + int(parts[mtp + 2])
        self.counts: dict = {}

    def _hook(self, router, args, output):
        routing_map = output[1]  # [tokens, experts] bool
        per_expert = routing_map.sum(0).tolist()
        label = self.labels[router]
        prev = self.counts.get(label)
        self.counts[label] = per_expert if prev is None else [a + b for a, b in zip(prev, per_expert)]

    def __enter__(self) -> dict:
        self.handles = [r.register_forward_hook(self._hook) for r in self.labels]
        return self.counts

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def forward(chunks: list, tokens, num_mtp: int, device: str = "cpu") -> tuple:
    """Logits [b, s, V] and MTP logits, one forward pass through the pipeline stages.

    chunks: this rank's model chunks (one, or one per virtual stage; GPTModels or their Float16Modules).
    This is what megatron-core's
    forward-only schedules do for one micro-batch (receive the previous stage's activations with
    P2PCommunicator, `set_input_tensor`, forward, send; with virtual stages the last rank's chunk v
    sends to the first rank's chunk v + 1); the schedule functions themselves allocate a token
    counter on device "cuda", so the steps are spelled out here. Every last-stage rank returns the
    logits gathered over tensor parallelism; other ranks return (None, []).
    """
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.transformer.module import Float16Module

    b, s = tokens.shape
    config = chunks[0].config
    comm = P2PCommunicator(ps.get_pipeline_model_parallel_group(), config)
    captured = []
    tokens, positions, mask = model_inputs(device, tokens)
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    for v, model in enumerate(chunks):
        first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=v if vpp else None)
        last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=v if vpp else None)
        gpt = model.module if isinstance(model, Float16Module) else model
        hook = gpt.output_layer.register_forward_hook(
            lambda m, i, o: captured.append(o[0].detach().clone())) if last else None
        with torch.no_grad():
            received = comm.recv_forward((s, b, config.hidden_size), first)
            if not first:
                model.set_input_tensor(received)
            # With MTP layers megatron-core computes their loss in the forward, so it needs labels.
            out = model(tokens, positions, mask, labels=tokens if num_mtp else None)
            comm.send_forward(out, last)
        if hook:
            hook.remove()
    if not captured:
        return None, []
    tp_group = ps.get_tensor_model_parallel_group()
    full = []
    for part in captured:  # [s, b, V/tp] per call: MTP depths first, then the main output
        pieces = [torch.empty_like(part) for _ in range(dist.get_world_size(tp_group))]
        dist.all_gather(pieces, part.contiguous(), group=tp_group)
        full.append(torch.cat(pieces, -1).transpose(0, 1).contiguous())
    return full[-1], full[:-1]


@dataclass
class ParityResult:
    layout: str
    tokens: int
    max_abs_err: float
    max_rel_err: float
    mtp_max_abs_err: list = field(default_factory=list)
    mtp_max_rel_err: float | None = None
    tolerance: float | None = TOLERANCE  # the bound on max_rel_err (fp32); None in bf16
    passed: bool = False
    source: str = "hf"
    device: str = "cpu"
    dtype: str = "fp32"
    spec: str = "local"      # megatron-core's layer spec: "transformer_engine" or "local"
    layers: list = field(default_factory=list)  # the checkpoint's decoder layers in the model (0-based)
    # Share of positions whose largest logit is the reference's, and the cosine similarity of each position's
    # logits centered on their mean (mean and min over positions); MTP: the worst depth. bf16 judges top-1
    # and the mean cosine.
    top1_agreement: float = 0.0
    mean_cosine: float = 0.0
    min_cosine: float = 0.0
    mtp_top1_agreement: float | None = None
    mtp_mean_cosine: float | None = None
    mtp_min_cosine: float | None = None
    bounds: dict = field(default_factory=dict)  # what `passed` judged, each metric's bound
    # Tokens megatron-core's router sent to each routed expert, per MoE layer ("layer number": [per expert]).
    # An expert that received none was not exercised: its weights did not enter the compared logits.
    # Layer numbers are megatron-core's (1-based) in the checkpoint: the MTP layers come after its decoder layers.
    expert_tokens: dict = field(default_factory=dict)
    experts_without_tokens: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def compare(a, b) -> tuple[float, float]:
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise Hy3Error(f"logits shapes differ: {list(a.shape)} vs {list(b.shape)}")
    err = (a - b).abs().max().item()
    return err, err / max(b.abs().max().item(), 1e-30)


def agreement(a, b) -> tuple[float, float, float]:
    """(top-1 agreement, min and mean over positions of the cosine of centered logits) of a against b."""
    import torch

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.shape != b.shape:
        raise Hy3Error(f"logits shapes differ: {list(a.shape)} vs {list(b.shape)}")
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    top1 = (a.argmax(-1) == b.argmax(-1)).double().mean().item()
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return top1, cos.min().item(), cos.mean().item()


def bounds(dtype: str, tolerance: float | None = None) -> dict:
    if dtype == "bf16":
        return {"top1_agreement": BF16_MIN_TOP1, "mean_cosine": BF16_MIN_MEAN_COSINE}
    return {"max_rel_err": tolerance or TOLERANCE}


def random_tokens(vocab: int, batch: int, tokens: int, seed: int):
    import torch

    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def parity_job(config_dir: str | Path, sources: list, tp=1, pp=1, ep=1, etp=None, tokens: int = 16,
               batch: int = 2, seed: int = 0, export: bool = False, vpp: int | None = None,
               layers=None, device: str | None = "cpu", dtype: str = "fp32", quiet: bool = True) -> ParityJob:
    """What every rank needs, once the model and layout are known to fit (one clear line otherwise).
    device None: cuda when torch sees a GPU, else cpu."""
    if dtype not in DTYPES:
        raise Hy3Error(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    cfg = load_config(config_dir)
    check_supported(cfg)
    if layers is not None:
        layers = LayerSubset(cfg, layers).layers
        sub = LayerSubset(cfg, layers).config
        if not sub.moe_layers:
            raise Hy3Error(f"--layers {','.join(map(str, layers))}: every chosen layer is dense; choose a MoE layer too "
                           f"(the checkpoint's first is layer {cfg.moe_layers[0]}): megatron-core builds the MoE "
                           "layers' spec, which the MTP layer uses too, from a MoE decoder layer")
        cfg = sub
    lay = make_layout(tp, pp, ep, etp, cfg, vpp)
    device = device or default_device()
    check_device(device, lay.world, str(lay))
    for kind, path in sources:  # fail here, in one line, before starting any process
        if kind == "hf":
            HFCheckpoint(path)
    ids = random_tokens(cfg.vocab_size, batch, tokens, seed)
    return ParityJob(str(config_dir), [(k, tuple(map(str, p)) if isinstance(p, (tuple, list)) else str(p))
                                       for k, p in sources], lay, ids.tolist(),
                     padded_vocab_size(cfg.vocab_size, lay.tp), export, layers, device, dtype, quiet)


def judge(job: ParityJob, ranks: list, reference: str | Path, tolerance: float = TOLERANCE) -> list[ParityResult]:
    """Each source's Megatron logits (from the ranks' outputs) against transformers on `reference`: the same
    decoder layers, in fp32 on this host's CPU."""
    import torch

    subset = job.subset(load_config(job.config_dir))
    cfg = subset.config
    ids = torch.tensor(job.tokens, dtype=torch.long)
    job.say(f"transformers reference ({'whole checkpoint' if job.layers is None else 'the same layers'}, fp32, CPU)")
    ref_logits, ref_mtp = reference_logits(reference, ids, layers=job.layers, say=job.say)
    judged = bounds(job.dtype, tolerance)
    results = []
    for i, (kind, _) in enumerate(job.sources):
        owner = next(r["sources"][i] for r in ranks if "logits" in r["sources"][i])
        if len(owner["mtp"]) != cfg.num_mtp_layers:
            raise Hy3Error(f"Megatron produced {len(owner['mtp'])} MTP outputs, the config has {cfg.num_mtp_layers}")
        abs_err, rel_err = compare(owner["logits"], ref_logits)
        res = ParityResult(str(job.layout), ids.numel(), abs_err, rel_err, source=kind,
                           tolerance=judged.get("max_rel_err"), device=job.device, dtype=job.dtype,
                           spec=ranks[0]["spec"], layers=list(subset.layers), bounds=judged)
        res.top1_agreement, res.min_cosine, res.mean_cosine = agreement(owner["logits"], ref_logits)
        rels, top1s, means, mins = [], [], [], []
        for got, want in zip(owner["mtp"], ref_mtp):
            a, r = compare(got, want)
            res.mtp_max_abs_err.append(a)
            rels.append(r)
            top1, cmin, cmean = agreement(got, want)
            top1s.append(top1)
            mins.append(cmin)
            means.append(cmean)
        if rels:
            res.mtp_max_rel_err, res.mtp_top1_agreement = max(rels), min(top1s)
            res.mtp_mean_cosine, res.mtp_min_cosine = min(means), min(mins)
        if job.dtype == "bf16":
            res.passed = all(t >= judged["top1_agreement"] for t in [res.top1_agreement] + top1s) and \
                all(c >= judged["mean_cosine"] for c in [res.mean_cosine] + means)
        else:
            res.passed = rel_err <= judged["max_rel_err"] and all(r <= judged["max_rel_err"] for r in rels)
        routed = {subset.hf_layer(layer - 1) + 1: c for r in ranks for layer, c in r["sources"][i].get("routed", {}).items()}
        res.expert_tokens = {str(layer): routed[layer] for layer in sorted(routed)}
        res.experts_without_tokens = sum(n == 0 for c in routed.values() for n in c)
        results.append(res)
    return results


def run_parity(config_dir: str | Path, sources: list, tp=1, pp=1, ep=1, etp=None, tokens: int = 16,
               batch: int = 2, seed: int = 0, tolerance: float = TOLERANCE, export: bool = False,
               reference: str | Path | None = None, vpp: int | None = None, layers=None, device: str | None = "cpu",
               dtype: str = "fp32", quiet: bool = True) -> tuple[list[ParityResult], list]:
    """Load each source into the Megatron Hy3 model (the checkpoint's decoder `layers`, default all) under this
    layout on `device` and compare its logits with transformers on `reference` (default: config_dir), built of
    the same layers. Returns (one result per source, raw rank outputs)."""
    job = parity_job(config_dir, sources, tp, pp, ep, etp, tokens, batch, seed, export, vpp, layers, device, dtype,
                     quiet)
    layers_text = "all" if job.layers is None else ",".join(map(str, job.layers))
    job.say(f"{job.layout}, {dtype}, decoder layers {layers_text}: starting {job.layout.world} "
            f"process{'es' if job.layout.world > 1 else ''} on {job.device} (each imports torch and megatron-core)")
    ranks = run_distributed(rank_main, job.layout.world, job, device=job.device)
    return judge(job, ranks, reference or config_dir, tolerance), ranks


def verify_parity(hf_dir: str | Path, tp=1, pp=1, ep=1, etp=None, tokens: int = 16, batch: int = 2,
                  seed: int = 0, mcore_dir: str | Path | None = None, tolerance: float = TOLERANCE,
                  vpp: int | None = None, layers=None, device: str | None = "cpu", dtype: str = "fp32",
                  quiet: bool = True) -> ParityResult:
    source = ("mcore", mcore_dir) if mcore_dir else ("hf", hf_dir)
    results, _ = run_parity(hf_dir, [source], tp, pp, ep, etp, tokens, batch, seed, tolerance, vpp=vpp,
                            layers=layers, device=device, dtype=dtype, quiet=quiet)
    return results[0]
