"""Round trips over random tiny Hy3 configs (hypothesis), run in one gloo process where megatron-core
builds its meta-device model for hf-to-mcore (test_round_trip_properties.py starts it; the CPU shims
stay out of the test process).

Each drawn case writes a tiny Hy3 with transformers in both layouts (make-tiny fuses the outer one with
torch itself), then checks, tensor by tensor and byte for byte with the safetensors library:
inner -> outer equals make-tiny's outer, outer -> inner equals the input, and HF -> torch_dist -> HF
(inner or outer) equals the input in that layout, every tensor in its own dtype.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

BIG = 64 * 1024 * 1024  # the converters' real limits


@st.composite
def cases(draw) -> dict:
    layers = draw(st.integers(1, 3))
    experts = draw(st.integers(2, 6))
    kv_heads = draw(st.sampled_from([1, 2]))
    dtype = draw(st.sampled_from(["bf16", "fp16", "fp32"]))
    return {
        "spec": {"layers": layers, "dense_layers": 0, "experts": experts, "top_k": draw(st.integers(2, min(3, experts))),
                 "hidden": draw(st.sampled_from([32, 48])), "heads": kv_heads * draw(st.integers(1, 3)),
                 "kv_heads": kv_heads, "head_dim": draw(st.sampled_from([8, 16])), "ffn": draw(st.sampled_from([24, 64])),
                 "expert_ffn": draw(st.sampled_from([16, 24])), "vocab": draw(st.sampled_from([96, 130, 256])),
                 "mtp": draw(st.integers(0, 1)), "shards": draw(st.integers(1, 4))},
        "pattern": draw(st.lists(st.sampled_from(["dense", "sparse"]), min_size=layers, max_size=layers)
                        .filter(lambda p: "sparse" in p)),  # a Hy3 has MoE layers (check_supported)
        "dtype": dtype, "bias_dtype": draw(st.sampled_from(["fp32", dtype])), "seed": draw(st.integers(0, 999)),
        "shard_size": draw(st.sampled_from(["6KB", "40KB", "5GB"])), "workers": draw(st.integers(1, 3)),
        "copy": draw(st.sampled_from([(700, True), (BIG, True), (777, False)])),  # (chunk or buffer, kernel copy)
        "mcore_dtype": draw(st.sampled_from([None, "fp32"])), "pad_vocab": draw(st.sampled_from([0, 6])),
        "chunk": draw(st.sampled_from([300, 4096, BIG])), "read_chunk": draw(st.sampled_from([500, BIG])),
        "file_size": draw(st.sampled_from(["20KB", "2GB"])), "fmt": draw(st.sampled_from(["inner", "outer"])),
    }


SMALL = {"spec": {"layers": 3, "dense_layers": 0, "experts": 4, "top_k": 2, "hidden": 32, "heads": 4, "kv_heads": 2,
                  "head_dim": 8, "ffn": 64, "expert_ffn": 16, "vocab": 130, "mtp": 1, "shards": 3},
         "pattern": ["sparse", "dense", "sparse"], "dtype": "bf16", "bias_dtype": "bf16", "seed": 1,
         "shard_size": "6KB", "workers": 3, "copy": (777, False), "mcore_dtype": "fp32", "pad_vocab": 6,
         "chunk": 300, "read_chunk": 500, "file_size": "20KB", "fmt": "outer"}
PLAIN = {**SMALL, "spec": {**SMALL["spec"], "layers": 2, "mtp": 0, "shards": 1}, "pattern": ["dense", "sparse"],
         "dtype": "fp32", "bias_dtype": "fp32", "copy": (700, True), "mcore_dtype": None, "pad_vocab": 0,
         "chunk": BIG, "read_chunk": BIG, "file_size": "2GB", "fmt": "inner", "workers": 1}


def assert_same(expected: Path, got: Path, what: str) -> None:
    from conftest import load_tensors, same_bits

    a, b = load_tensors(expected), load_tensors(got)
    assert sorted(a) == sorted(b), f"{what}: keys differ, e.g. {sorted(set(a) ^ set(b))[:3]}"
    bad = [f"{k} ({a[k].dtype} -> {b[k].dtype})" for k in a if not same_bits(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def check_case(case: dict, work: Path) -> None:
    from megatron_hy.convert.hf_to_mcore import hf_to_mcore
    from megatron_hy.convert.layout import convert_layout
    from megatron_hy.convert.mcore_to_hf import mcore_to_hf
    from megatron_hy.formats.safetensors_io import CopyLimits
    from megatron_hy.tiny import TinySpec, write_tiny

    spec = TinySpec(**case["spec"])
    made = {fmt: write_tiny(work / f"made-{fmt}", spec, fmt, seed=case["seed"], dtype=case["dtype"], tokenizer=False,
                            layer_types=tuple(case["pattern"]), bias_dtype=case["bias_dtype"]) for fmt in ("inner", "outer")}
    size, kernel = case["copy"]
    limits = CopyLimits(chunk=size, buffer=size, kernel=kernel)
    layout = dict(workers=case["workers"], max_shard_size=case["shard_size"], quiet=True, limits=limits)
    convert_layout(made["inner"], work / "outer", "outer", **layout)
    assert_same(made["outer"], work / "outer", "inner -> outer")
    convert_layout(work / "outer", work / "inner", "inner", **layout)
    assert_same(made["inner"], work / "inner", "inner -> outer -> inner")

    padded = spec.vocab + case["pad_vocab"] if case["pad_vocab"] else None
    hf_to_mcore(made["inner"], work / "mcore", workers=case["workers"], dtype=case["mcore_dtype"], padded_vocab=padded,
                quiet=True, max_file_size=case["file_size"], in_process=True, chunk_bytes=case["chunk"])
    mcore_to_hf(work / "mcore", work / "hf", made["inner"], fmt=case["fmt"], workers=case["workers"],
                max_shard_size=case["shard_size"], quiet=True, chunk_bytes=case["read_chunk"])
    assert_same(made[case["fmt"]], work / "hf", "HF -> torch_dist -> HF")


def property_round_trips(rank: int, world: int, work: str, max_examples: int) -> dict:
    """Every drawn case and the two fixed ones (all limits small, bf16 bias, MTP; and plain, no MTP);
    the first failure, shrunk by hypothesis, as text."""
    checked = []

    @settings(max_examples=max_examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @example(SMALL)
    @example(PLAIN)
    @given(cases())
    def round_trips(case):
        work_dir = Path(tempfile.mkdtemp(dir=work))
        try:
            check_case(case, work_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        checked.append(case)

    try:
        round_trips()
    except Exception:  # noqa: BLE001 - reported to the test with hypothesis' falsifying example
        return {"checked": checked, "failure": traceback.format_exc()}
    return {"checked": checked, "failure": None}
