"""LoRA adapters for Hy3, read from every format they come in, as factors per logical HF tensor.

Formats (names and layouts read from ms-swift 4.6.0, mcore-bridge 1.6.5 and peft 0.20 as installed):

* `mcore`: a Megatron torch_dist adapter checkpoint, as ms-swift's Megatron LoRA training saves it
  (`--mcore_adapter`): DCP keys `<megatron module>.lora_A.default.weight` / `.lora_B.default.weight`,
  routed experts stacked on a leading expert axis; settings in `args.json`. lora_B of a GLU `linear_fc1`
  (dense and shared experts) is stored in the row order of the TP layout it was saved under: per TP rank
  `[gate_t; up_t]`, so the saving TP size (from args) is needed to split it.
* `peft`: a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`): what ms-swift writes
  from Megatron training with `save_safetensors` (Tencent's names: `shared_mlp`, per-expert
  `mlp.experts.{e}.gate_proj`), or a plain HF PEFT adapter for transformers' HYV3 (module names:
  `shared_experts`; routed experts through `target_parameters`, one fused LoRA per 3D tensor).

Scaling: megatron-core LoRA layers built by mcore-bridge use `lora_alpha / r` whatever `use_rslora`
says (the config is not passed to them), so adapters trained in Megatron are read with alpha / r;
plain PEFT adapters use their own `use_rslora`. `rslora="on"|"off"` overrides both.
"""

from __future__ import annotations

import json
import math
import re
import threading
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from .. import fields
from ..config import Hy3Config
from ..errors import Hy3Error
from ..mapping import (LAYER, PEFT_PREFIX, MCoreTensor, fused_rows, fused_shape, fused_specs, layer_of,
                       logical_tensors, mcore_tensors, to_inner)
from ..transforms import from_mcore, to_mcore
from .dcp import DcpReader
from .safetensors_io import read_header
from .torch_dist import find_iteration_dir, load_common


@dataclass
class Factors:
    A: object  # [r, in] float32
    B: object  # [out, r] float32

    def delta(self, scaling: float):
        return (self.B @ self.A) * scaling


class Adapter:
    """Common interface: which logical HF tensors carry LoRA, and their factors."""

    kind = "?"
    root: Path
    rank: int
    alpha: float
    scaling: float
    notes: list

    def targets(self) -> list[str]:
        raise NotImplementedError

    def factors(self, name: str) -> Factors:
        raise NotImplementedError

    def delta(self, name: str):
        return self.factors(name).delta(self.scaling)

    def mcore_delta(self, t: MCoreTensor, expert: int | None, shapes: dict):
        """The delta of one global Megatron tensor (one expert's slice for expert tensors), in
        Megatron's row order. Parts without LoRA contribute zeros."""
        import torch

        names = t.sources(expert)
        if not any(n in self._target_set for n in names):
            return None
        parts = [self.delta(n) if n in self._target_set else torch.zeros(shapes[n]) for n in names]
        return to_mcore(t.row.op, parts, self.config, rows=t.shape[0] if t.experts is None else None)

    @property
    def _target_set(self) -> set:
        if not hasattr(self, "_targets_cache"):
            self._targets_cache = set(self.targets())
        return self._targets_cache


def _scaling(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _check_pair(where: str, A, B, rank: int | None) -> int:
    if A.dim() != 2 or B.dim() != 2:
        raise Hy3Error(f"{where}: lora_A and lora_B must be 2-D, got {list(A.shape)} and {list(B.shape)}")
    if A.shape[0] != B.shape[1]:
        raise Hy3Error(f"{where}: rank mismatch: lora_A has {A.shape[0]} rows, lora_B has {B.shape[1]} columns")
    if rank is not None and A.shape[0] != rank:
        raise Hy3Error(f"{where}: rank mismatch: factors have rank {A.shape[0]}, the adapter config says r={rank}")
    return A.shape[0]


def _check_shape(where: str, name: str, f: Factors, shape: tuple) -> None:
    out, inp = shape[0], int(math.prod(shape[1:]))
    if f.B.shape[0] != out or f.A.shape[1] != inp:
        raise Hy3Error(f"{where}: LoRA for {name} has delta shape [{f.B.shape[0]}, {f.A.shape[1]}], the base tensor "
                       f"is {list(shape)}; is this an adapter of another model?")


# --- Megatron torch_dist adapter ----------------------------------------------------------------

class McoreAdapter(Adapter):
    kind = "mcore"

    def __init__(self, root: Path, cfg: Hy3Config, rslora: str = "auto", iteration: int | None = None):
        self.root, self.config, self.notes = root, cfg, []
        self._local = threading.local()
        self.it = find_iteration_dir(root, iteration)
        self.reader = DcpReader(self.it)
        args, src = _swift_args(root, self.it)
        lora_keys = [k for k in self.reader.keys() if ".lora_A.default." in k or ".lora_B.default." in k]
        if not lora_keys:
            raise Hy3Error(f"{self.it}: no lora_A/lora_B tensors; not a LoRA adapter checkpoint")
        get = fields.get
        self.rank = get(args, src, "lora_rank", fields.integer, lo=1,
                        default=self.reader.shape(lora_keys[0])[-2 if ".lora_A." in lora_keys[0] else -1])
        self.alpha = get(args, src, "lora_alpha", fields.number, default=32.0, positive=True)
        self.saved_tp = get(args, src, "tensor_model_parallel_size", fields.integer, default=1, lo=1)
        rs = {"on": True, "off": False}.get(rslora, False)
        if rslora == "auto" and get(args, src, "use_rslora", fields.boolean, default=False):
            self.notes.append("args say use_rslora, but ms-swift's Megatron LoRA layers ignore it (mcore-bridge "
                              "LoraParallelLinear gets no config); scaling alpha/r, as trained. --rslora on overrides")
        self.scaling = _scaling(self.alpha, self.rank, rs)
        self.table = {t.key: t for t in mcore_tensors(cfg)}
        self.modules: dict[str, MCoreTensor] = {}
        shapes = {t.name: t.shape for t in logical_tensors(cfg)}
        self._shapes = shapes
        for k in lora_keys:
            module = k.split(".lora_")[0]
            t = self.table.get(module + ".weight")
            if t is None:
                raise Hy3Error(f"{self.it}: LoRA on {module}, which a Hy3 model of this config does not have "
                               f"(target the base lacks, or an adapter of another model)")
            self.modules[module] = t
        for module, t in self.modules.items():
            for part in ("lora_A", "lora_B"):
                if f"{module}.{part}.default.weight" not in self.reader.tensors:
                    raise Hy3Error(f"{self.it}: {module} has no {part}.default.weight")
            a, b = self.reader.shape(f"{module}.lora_A.default.weight"), self.reader.shape(f"{module}.lora_B.default.weight")
            if a[-2] != b[-1] or a[-2] != self.rank:
                raise Hy3Error(f"{self.it}: rank mismatch at {module}: lora_A {list(a)}, lora_B {list(b)}, r={self.rank}")
            rows, cols = (t.shape[1], t.shape[2]) if t.experts else (t.shape[0], t.shape[1])
            if a[-1] != cols or b[-2] != rows:
                raise Hy3Error(f"{self.it}: LoRA on {module} has delta shape [{b[-2]}, {a[-1]}], the base tensor is "
                               f"[{rows}, {cols}]; is this an adapter of another model?")
        self.where: dict[str, tuple] = {}
        for module, t in self.modules.items():
            for e in range(t.experts or 1):
                for j, n in enumerate(t.sources(e if t.experts else None)):
                    self.where[n] = (module, t, e if t.experts else None, j)

    def targets(self) -> list[str]:
        return sorted(self.where)

    def _raw(self, module: str, t: MCoreTensor, expert):
        """(A, B) of a Megatron module (one expert's), B in base-weight global row order. The last one read
        is kept per thread: q, k and v (gate and up) come from the same factors, one after another."""
        cached = getattr(self._local, "raw", None)
        if cached is None or cached[0] != (module, expert):
            cached = self._local.raw = ((module, expert), self._read_raw(module, t, expert))
        return cached[1]

    def _read_raw(self, module: str, t: MCoreTensor, expert):
        import torch

        def read(part):
            key = f"{module}.{part}.default.weight"
            shape = self.reader.shape(key)
            if expert is None:
                return self.reader.read(key, (0,) * len(shape), shape).float()
            return self.reader.read(key, (expert, 0, 0), (1,) + tuple(shape[1:]))[0].float()

        A, B = read("lora_A"), read("lora_B")
        if t.row.op == "glu" and t.experts is None and self.saved_tp > 1:
            # No swiglu factory on lora_B: its global rows are the TP ranks' [gate_t; up_t] blocks in turn.
            tp, half = self.saved_tp, B.shape[0] // 2
            if half % tp:
                raise Hy3Error(f"{module}: lora_B rows {B.shape[0]} do not split over the saving TP size {tp}")
            blocks = B.reshape(tp, 2, half // tp, B.shape[1])
            B = torch.cat([blocks[:, 0].reshape(half, -1), blocks[:, 1].reshape(half, -1)], 0)
        return A, B

    def factors(self, name: str) -> Factors:
        module, t, e, j = self.where[name]
        A, B = self._raw(module, t, e)
        names = t.sources(e)
        parts = from_mcore(t.row.op, B, [(self._shapes[n][0], B.shape[1]) for n in names], self.config)
        return Factors(A, parts[j].contiguous())

    def mcore_delta(self, t: MCoreTensor, expert: int | None, shapes: dict):
        module = t.key[: -len(".weight")]
        if module not in self.modules:
            return None
        A, B = self._raw(module, t, expert)
        return (B @ A) * self.scaling


def _swift_args(root: Path, it: Path) -> tuple[dict, str]:
    """The training args ms-swift saved (args.json, else the args in the checkpoint's common state) and the file
    they came from; ({}, "") when there are none (the settings then come from the tensors)."""
    for path in (root / "args.json", it.parent / "args.json"):
        if path.exists():
            return _json_object(path), str(path)
    common, src = load_common(it)
    args = (common or {}).get("args")
    if args is None:
        return {}, ""
    if isinstance(args, Namespace):
        args = vars(args)
    return fields.mapping(args, src, "args"), src


# --- PEFT directory -----------------------------------------------------------------------------

_KEY = re.compile("^(?:" + re.escape(PEFT_PREFIX)
                  + r")?(?P<module>.+?)\.(?P<part>lora_A|lora_B)(?:\.default)?\.weight$")


class PeftAdapter(Adapter):
    kind = "peft"

    def __init__(self, root: Path, cfg: Hy3Config, rslora: str = "auto"):
        from safetensors import SafetensorError, safe_open

        self.root, self.config, self.notes = root, cfg, []
        conf_path = root / "adapter_config.json"
        conf, where, get = _json_object(conf_path), str(conf_path), fields.get
        if get(conf, where, "peft_type", fields.string, default="LORA").upper() != "LORA":
            raise Hy3Error(f"{conf_path}: peft_type {conf.get('peft_type')!r}; only LORA adapters are supported")
        if get(conf, where, "use_dora", fields.boolean, default=False):
            raise Hy3Error(f"{conf_path}: DoRA adapters are not supported")
        files = sorted(root.glob("adapter_model*.safetensors"))
        if not files:
            raise Hy3Error(f"{root}: no adapter_model.safetensors")
        self.rank = get(conf, where, "r", fields.integer, default=8, lo=1)
        self.alpha = get(conf, where, "lora_alpha", fields.number, default=8.0, positive=True)
        megatron = _trained_in_megatron(root)
        use_rs = get(conf, where, "use_rslora", fields.boolean, default=False)
        if rslora == "auto" and megatron and use_rs:
            use_rs = False
            self.notes.append("adapter_config says use_rslora, but it was trained with ms-swift's Megatron LoRA, whose "
                              "layers ignore it; scaling alpha/r, as trained. --rslora on overrides")
        elif rslora != "auto":
            use_rs = rslora == "on"
        self.rank_pattern = _patterns(conf, where, "rank_pattern", fields.integer, lo=1)
        self.alpha_pattern = _patterns(conf, where, "alpha_pattern", fields.number, positive=True)
        get(conf, where, "target_parameters", fields.string_list, default=None)
        self.use_rslora = use_rs
        self.scaling = _scaling(self.alpha, self.rank, use_rs)
        self.tensors: dict[str, object] = {}
        for f in files:
            read_header(f)  # a truncated or corrupt file: one error naming it, before safetensors sees it
            try:
                with safe_open(str(f), "pt") as st:
                    for k in st.keys():
                        self.tensors[k] = st.get_tensor(k).float()
            except SafetensorError as e:
                raise Hy3Error(f"{f}: unreadable safetensors file ({e})") from None
        self.logical = {t.name: t for t in logical_tensors(cfg)}
        self.pairs: dict[str, tuple] = {}   # logical name -> (A, B, scaling)
        self._collect(conf)

    def _module_scaling(self, module: str) -> tuple[int, float]:
        r, a = self.rank, self.alpha
        for pat, v in self.rank_pattern.items():
            if re.search(pat, module):
                r = int(v)
        for pat, v in self.alpha_pattern.items():
            if re.search(pat, module):
                a = float(v)
        return r, _scaling(a, r, self.use_rslora)

    def _collect(self, conf: dict) -> None:
        groups: dict[str, dict] = {}
        for k, v in self.tensors.items():
            m = _KEY.match(k)
            if not m:
                raise Hy3Error(f"{self.root}: unexpected key {k} in adapter_model.safetensors (expected ...lora_A/B.weight)")
            groups.setdefault(m["module"], {})[m["part"]] = v
        params = [p for p in (conf.get("target_parameters") or [])]
        for module, ab in sorted(groups.items()):
            if set(ab) != {"lora_A", "lora_B"}:
                raise Hy3Error(f"{self.root}: {module} has {sorted(ab)} but needs lora_A and lora_B")
            if _fused_under(module):
                self._collect_fused(module, ab, params)
                continue
            rank, scaling = self._module_scaling(module)
            _check_pair(f"{self.root}: {module}", ab["lora_A"], ab["lora_B"], rank)
            name = _logical_name(module)
            if name not in self.logical:
                raise Hy3Error(f"{self.root}: LoRA on {module}, but a Hy3 model of this config has no tensor {name} "
                               f"(target the base lacks, or an adapter of another model)")
            f = Factors(ab["lora_A"], ab["lora_B"])
            _check_shape(str(self.root), name, f, self.logical[name].shape)
            self.pairs[name] = (f, scaling)

    def _collect_fused(self, module: str, ab: dict, params: list) -> None:
        """PEFT ParamWrapper on HYV3Experts: with both 3D tensors targeted, gate_up_proj is the inner wrapper
        (`experts.base_layer.lora_*`) and down_proj the outer (`experts.lora_*`); with one, it is `experts.lora_*`."""
        experts = module.replace(".base_layer", "")
        fused = {k: k.rsplit(".", 1)[1] for k in _fused_under(module)}   # fused key -> its parameter's name
        mine = [k for k, leaf in fused.items()
                if any(f"{experts}.{leaf}" == p or f"{experts}.{leaf}".endswith("." + p) for p in params)]
        if not mine:
            raise Hy3Error(f"{self.root}: LoRA tensors for {module} but adapter_config.json has no target_parameters "
                           f"for {experts}." + " / ".join(fused.values()))
        # HYV3Experts defines gate_up_proj first (the table's order), so it is the inner wrapper when both are targeted.
        key = mine[0] if (module.endswith(".base_layer") or len(mine) == 1) else mine[1]
        param = fused[key]
        layer = layer_of(module)
        if layer is None or layer not in self.config.all_hf_layers() or not self.config.is_moe(layer):
            raise Hy3Error(f"{self.root}: LoRA on {module}, but layer {layer} of this Hy3 config has no routed experts")
        rank, scaling = self._module_scaling(experts + "." + param)
        E = self.config.num_experts
        A, B = ab["lora_A"], ab["lora_B"]
        if A.shape[0] != E * rank or B.shape[1] != E * rank:
            raise Hy3Error(f"{self.root}: rank mismatch at {module}: lora_A {list(A.shape)}, lora_B {list(B.shape)} "
                           f"for {E} experts of rank {rank}")
        A = A.reshape(E, rank, A.shape[1])
        B = B.reshape(B.shape[0], rank, E)
        prefix = LAYER.format(i=layer)
        shape = fused_shape(key, self.config)[1:]
        for e in range(E):
            f = Factors(A[e], B[:, :, e].contiguous())
            _check_shape(str(self.root), param, f, shape)
            for t in fused_specs()[key]:
                self.pairs[prefix + t.inner.format(e=e)] = (Factors(f.A, f.B[fused_rows(t, self.config)]), scaling)

    def targets(self) -> list[str]:
        return sorted(self.pairs)

    def factors(self, name: str) -> Factors:
        return self.pairs[name][0]

    def delta(self, name: str):
        f, scaling = self.pairs[name]
        return f.delta(scaling)


def _logical_name(module: str) -> str:
    """A PEFT module name (transformers' or Tencent's spelling) -> the logical name of its weight."""
    return to_inner(module + ".weight")


def _fused_under(module: str) -> list[str]:
    """The fused expert keys (after the layer prefix) a PEFT module name of HYV3Experts holds, in table order."""
    experts = module.removesuffix(".base_layer")
    return [k for k in fused_specs() if experts.endswith("." + k.rsplit(".", 1)[0])]


def _trained_in_megatron(root: Path) -> bool:
    """ms-swift writes args.json beside the adapter; Megatron training's has Megatron parallel sizes."""
    for path in (root / "args.json", root.parent / "args.json"):
        if path.exists():
            args = _json_object(path)
            return "tensor_model_parallel_size" in args or "expert_model_parallel_size" in args
    return False


def _json_object(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise Hy3Error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise Hy3Error(f"{path}: expected a JSON object, found {fields.shown(d)}")
    return d


def _patterns(conf: dict, where: str, name: str, check, **limits) -> dict:
    """PEFT's rank_pattern / alpha_pattern: {regex: value}, each regex and value checked."""
    pats = fields.get(conf, where, name, fields.mapping, default={})
    for pat, v in pats.items():
        try:
            re.compile(pat)
        except re.error as e:
            raise Hy3Error(f"{where}: {name}: {pat!r} is not a valid regular expression ({e})") from None
        check(v, where, f"{name}[{pat!r}]", **limits)
    return pats


def open_adapter(path: str | Path, cfg: Hy3Config, rslora: str = "auto") -> Adapter:
    """The adapter at `path`, in whichever format it is."""
    root = Path(path)
    if not root.is_dir():
        raise Hy3Error(f"{root}: not a directory")
    if (root / "adapter_config.json").exists():
        adapter = PeftAdapter(root, cfg, rslora)
    elif (root / "latest_checkpointed_iteration.txt").exists() or list(root.glob("iter_*")) or (root / ".metadata").exists():
        adapter = McoreAdapter(root, cfg, rslora)
    else:
        raise Hy3Error(f"{root}: not a LoRA adapter (expected adapter_config.json + adapter_model.safetensors, "
                       f"or a Megatron torch_dist adapter checkpoint)")
    if not adapter.targets():
        raise Hy3Error(f"{root}: the adapter has no LoRA tensors")
    return adapter
