"""`hy3 verify parity`: the Megatron Hy3 model, loaded through the mapping table under a parallel
layout on CPU, against transformers' HYV3ForCausalLM and the reference MTP.

Relative error is max|megatron - reference| / max|reference| over all logits of an output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import Hy3Error

TOLERANCE = 1e-5


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


def rank_main(rank: int, world: int, job: ParityJob) -> dict:
    """One rank: parallel state, this rank's model chunks, then per source: weights, forward, (export)."""
    import torch
    from megatron.core import parallel_state as ps

    from ..config import load_config
    from ..hf_checkpoint import HFCheckpoint
    from .harness import CPU_CONFIG, init_parallel, parallel_config
    from .model import build_gpt_model, make_transformer_config
    from .weights import check_tp_axes, export_pieces, load_into_model

    lay = job.layout
    init_parallel(lay.tp, lay.pp, lay.ep, lay.etp, lay.vpp)
    cfg = load_config(job.config_dir)
    extra = dict(CPU_CONFIG, params_dtype=torch.float32, pipeline_dtype=torch.float32, batch_p2p_comm=False,
                 **parallel_config(lay.tp, lay.pp, lay.ep, lay.etp, lay.vpp))
    tconfig = make_transformer_config(cfg, **extra)
    chunks = [build_gpt_model(cfg, tconfig, padded_vocab=job.padded_vocab, use_te=False,
                              vp_stage=v if lay.vpp else None) for v in range(lay.chunks)]
    for m in chunks:
        m.eval()
        check_tp_axes(m, cfg, job.padded_vocab)
    owner = (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
             and ps.get_data_parallel_rank() == 0)
    tokens = torch.tensor(job.tokens, dtype=torch.long)
    # decoder layer numbers (1-based, global) of each chunk: with VPP, megatron-core interleaves them
    out: dict = {"rank": rank, "sources": [], "layers": [[l.layer_number for l in m.decoder.layers] for m in chunks]}
    for kind, path in job.sources:
        if kind == "mcore":
            from .weights import load_mcore_into_model

            load_mcore_into_model(chunks, path)
        elif kind == "hf+lora":  # (base HF dir, adapter dir): base weights plus the delta in Megatron layout
            from ..lora.adapters import open_adapter
            from .weights import add_lora_delta

            base, adapter = path
            for m in chunks:
                load_into_model(m, cfg, HFCheckpoint(base).read, job.padded_vocab)
                add_lora_delta(m, cfg, open_adapter(adapter, cfg), job.padded_vocab)
        else:
            for m in chunks:
                load_into_model(m, cfg, HFCheckpoint(path).read, job.padded_vocab)
        with count_routed_tokens(chunks) as routed:
            logits, mtp = forward(chunks, tokens, cfg.num_mtp_layers)
        res: dict = {}
        if owner:
            res["logits"] = logits[..., : cfg.vocab_size].numpy()
            res["mtp"] = [m[..., : cfg.vocab_size].numpy() for m in mtp]
        if ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0:
            res["routed"] = routed  # every pipeline stage's MoE layers, counted once
        if job.export:
            res["pieces"] = [p for m in chunks for p in export_pieces(m)]
        out["sources"].append(res)
    return out


class count_routed_tokens:
    """Within the block: tokens megatron-core's router sent to each routed expert, per MoE layer.

    Gives {layer_number: [tokens per expert]}; megatron-core numbers the MTP layers after the decoder's.
    """

    def __init__(self, chunks):
        from megatron.core.transformer.moe.router import TopKRouter

        self.routers = [r for m in chunks for r in m.modules() if isinstance(r, TopKRouter)]
        self.counts: dict = {}

    def _hook(self, router, args, output):
        routing_map = output[1]  # [tokens, experts] bool
        per_expert = routing_map.sum(0).tolist()
        prev = self.counts.get(router.layer_number)
        self.counts[router.layer_number] = per_expert if prev is None else [a + b for a, b in zip(prev, per_expert)]

    def __enter__(self) -> dict:
        self.handles = [r.register_forward_hook(self._hook) for r in self.routers]
        return self.counts

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def forward(chunks: list, tokens, num_mtp: int) -> tuple:
    """Logits [b, s, V] and MTP logits, one forward pass through the pipeline stages.

    chunks: this rank's model chunks (one, or one per virtual stage). This is what megatron-core's
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

    from .harness import causal_mask

    b, s = tokens.shape
    config = chunks[0].config
    comm = P2PCommunicator(ps.get_pipeline_model_parallel_group(), config)
    captured = []
    positions = torch.arange(s)[None].expand(b, -1)
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    for v, model in enumerate(chunks):
        first = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=v if vpp else None)
        last = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=v if vpp else None)
        hook = model.output_layer.register_forward_hook(
            lambda m, i, o: captured.append(o[0].detach().clone())) if last else None
        with torch.no_grad():
            received = comm.recv_forward((s, b, config.hidden_size), first)
            if not first:
                model.set_input_tensor(received)
            # With MTP layers megatron-core computes their loss in the forward, so it needs labels.
            out = model(tokens, positions, causal_mask(s), labels=tokens if num_mtp else None)
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
    tolerance: float = TOLERANCE
    passed: bool = False
    source: str = "hf"
    # Tokens megatron-core's router sent to each routed expert, per MoE layer ("layer number": [per expert]).
    # An expert that received none was not exercised: its weights did not enter the compared logits.
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


def random_tokens(vocab: int, batch: int, tokens: int, seed: int):
    import torch

    return torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))


def parity_job(config_dir: str | Path, sources: list, tp=1, pp=1, ep=1, etp=None, tokens: int = 16,
               batch: int = 2, seed: int = 0, export: bool = False, vpp: int | None = None) -> ParityJob:
    """What every rank needs, once the model and layout are known to fit (one clear line otherwise)."""
    from ..config import load_config
    from ..hf_checkpoint import HFCheckpoint
    from .config import check_supported, padded_vocab_size

    cfg = load_config(config_dir)
    check_supported(cfg)
    lay = make_layout(tp, pp, ep, etp, cfg, vpp)
    for kind, path in sources:  # fail here, in one line, before starting any process
        if kind == "hf":
            HFCheckpoint(path)
    ids = random_tokens(cfg.vocab_size, batch, tokens, seed)
    return ParityJob(str(config_dir), [(k, tuple(map(str, p)) if isinstance(p, (tuple, list)) else str(p))
                                       for k, p in sources], lay, ids.tolist(),
                     padded_vocab_size(cfg.vocab_size, lay.tp), export)


def judge(job: ParityJob, ranks: list, reference: str | Path, tolerance: float = TOLERANCE) -> list[ParityResult]:
    """Each source's Megatron logits (from the ranks' outputs) against transformers on `reference`."""
    import torch

    from ..config import load_config
    from ..reference import reference_logits

    cfg = load_config(job.config_dir)
    ids = torch.tensor(job.tokens, dtype=torch.long)
    ref_logits, ref_mtp = reference_logits(reference, ids)
    results = []
    for i, (kind, _) in enumerate(job.sources):
        owner = next(r["sources"][i] for r in ranks if "logits" in r["sources"][i])
        if len(owner["mtp"]) != cfg.num_mtp_layers:
            raise Hy3Error(f"Megatron produced {len(owner['mtp'])} MTP outputs, the config has {cfg.num_mtp_layers}")
        abs_err, rel_err = compare(owner["logits"], ref_logits)
        res = ParityResult(str(job.layout), ids.numel(), abs_err, rel_err, source=kind, tolerance=tolerance)
        rels = []
        for got, want in zip(owner["mtp"], ref_mtp):
            a, r = compare(got, want)
            res.mtp_max_abs_err.append(a)
            rels.append(r)
        res.mtp_max_rel_err = max(rels) if rels else None
        res.passed = rel_err <= tolerance and all(r <= tolerance for r in rels)
        routed = {layer: c for r in ranks for layer, c in r["sources"][i].get("routed", {}).items()}
        res.expert_tokens = {str(layer): routed[layer] for layer in sorted(routed)}
        res.experts_without_tokens = sum(n == 0 for c in routed.values() for n in c)
        results.append(res)
    return results


def run_parity(config_dir: str | Path, sources: list, tp=1, pp=1, ep=1, etp=None, tokens: int = 16,
               batch: int = 2, seed: int = 0, tolerance: float = TOLERANCE, export: bool = False,
               reference: str | Path | None = None, vpp: int | None = None) -> tuple[list[ParityResult], list]:
    """Load each source into the Megatron Hy3 model under this layout and compare its logits with
    transformers on `reference` (default: config_dir). Returns (one result per source, raw rank outputs)."""
    from .harness import run_distributed

    job = parity_job(config_dir, sources, tp, pp, ep, etp, tokens, batch, seed, export, vpp)
    ranks = run_distributed(rank_main, job.layout.world, job)
    return judge(job, ranks, reference or config_dir, tolerance), ranks


def verify_parity(hf_dir: str | Path, tp=1, pp=1, ep=1, etp=None, tokens: int = 16, batch: int = 2,
                  seed: int = 0, mcore_dir: str | Path | None = None, tolerance: float = TOLERANCE,
                  vpp: int | None = None) -> ParityResult:
    source = ("mcore", mcore_dir) if mcore_dir else ("hf", hf_dir)
    results, _ = run_parity(hf_dir, [source], tp, pp, ep, etp, tokens, batch, seed, tolerance, vpp=vpp)
    return results[0]
