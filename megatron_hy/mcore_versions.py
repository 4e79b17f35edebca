"""The megatron-core releases hy3 supports, and every difference between them that hy3 meets.

Each difference is named once here, with the release that introduced it; code elsewhere asks `since(X)`
(or `bugs_for(...)`) instead of comparing version numbers itself. Read from the released wheels
(0.16.1, 0.17.0, 0.18.0, 0.18.1, 0.19.0, 0.19.2) and checked by the tests under 0.16.1, 0.18.0 and 0.19.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

# The range pyproject.toml admits (0.17 and later need Python >= 3.12) and the releases `make test` runs.
SUPPORTED = (0, 16, 1), (0, 20)
TESTED = ("0.16.1", "0.18.0", "0.19.2")


@dataclass(frozen=True)
class Change:
    since: str   # first release with the new behaviour
    what: str


# megatron-core 0.17: MultiTokenPredictionLayer keeps its decoder layer as `mtp_model_layer` (it was
# `transformer_layer`; checkpoint keys keep `transformer_layer`), numbered from 1 instead of after the decoder.
MTP_LAYER_RENAMED = Change("0.17", "the MTP layer's inner decoder layer is `mtp_model_layer`, layer_number from 1")
# megatron-core 0.17: MultiTokenPredictionBlock.sharded_state_dict no longer adds its layers' plain state_dict, so a
# transformer-engine model stops asking for `mtp.layers.K.transformer_layer.self_attention.core_attention._extra_state`.
MTP_NO_CORE_ATTENTION_EXTRA_STATE = Change("0.17", "the TE model does not ask for the MTP attention core's _extra_state")
# megatron-core 0.18: get_gpt_decoder_layer_specs gives a MoE layer's mlp as functools.partial(MoELayer, ...)
# (moe_module_specs.py), not a ModuleSpec(module=MoELayer).
MOE_SPEC_IS_PARTIAL = Change("0.18", "a MoE layer's mlp spec is functools.partial(MoELayer, ...)")
# megatron-core 0.19: dist_checkpointing.save keeps the common (non-tensor) state as a `common_state` object in the
# DCP checkpoint and writes no common.pt (it still reads one).
NO_COMMON_PT = Change("0.19", "dist_checkpointing.save writes no common.pt (common state lives in the DCP)")

CHANGES = (MTP_LAYER_RENAMED, MTP_NO_CORE_ATTENTION_EXTRA_STATE, MOE_SPEC_IS_PARTIAL, NO_COMMON_PT)


@dataclass(frozen=True)
class Bug:
    first: str       # first affected release
    fixed: str       # first release without it
    when: str        # the recipe settings that meet it (a key of `bug_triggers`)
    what: str


# Bugs of supported releases that Hy3 fine-tuning can meet in plain megatron-core (Megatron-LM's own scripts, flags
# from `hy3 config --to megatron`). ms-swift's `megatron sft` builds Hy3 through mcore-bridge (1.6.5), whose MTP layer
# replaces megatron-core's MTP forward and loss, so recipe runs through ms-swift meet none of them.
BUGS = (
    # gpt_model.py divides the MTP loss by the number of MTP loss tokens without a guard (0.17 masks and clamps).
    Bug("0.16.1", "0.17.0", "mtp",
        "the MTP loss is NaN for a micro-batch without MTP loss tokens (GPTModel divides by their count, 0)"),
    # 0.18.0 added padding_mask to MultiTokenPredictionLayer.forward's call of _checkpointed_forward, whose
    # signature lacks it until 0.19.0.
    Bug("0.18.0", "0.19.0", "mtp+full_recompute",
        "MTP with recompute_granularity full fails in MultiTokenPredictionLayer._checkpointed_forward "
        "(TypeError: unexpected keyword argument 'padding_mask')"),
)
SWIFT_NOT_AFFECTED = ("ms-swift's `megatron sft` builds Hy3 through mcore-bridge, whose MTP layer replaces that code, "
                      "so this recipe's run is not affected; plain Megatron-LM runs with these settings are")


def parse(version: str) -> tuple[int, ...]:
    """'0.19.2' -> (0, 19, 2); pre-release and local tails ('0.19.0rc1', '0.16.1+cu') are ignored."""
    out = []
    for part in version.split("+")[0].split("."):
        digits = ""
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


@lru_cache(maxsize=1)
def installed() -> str | None:
    """The installed megatron-core's version, read from its package metadata (without importing it)."""
    try:
        return version("megatron-core")
    except PackageNotFoundError:
        return None


def since(change: Change, version: str | None = None) -> bool:
    """Whether `version` (default: the installed megatron-core) has this change."""
    v = version or installed()
    return v is not None and parse(v) >= parse(change.since)


def supported(version: str) -> bool:
    low, high = SUPPORTED
    return low <= parse(version) < high


def recipe_triggers(args: dict) -> set[str]:
    """The `when` keys of BUGS that `megatron sft` arguments meet."""
    out = set()
    if int(args.get("mtp_num_layers") or 0) > 0:
        out.add("mtp")
        if args.get("recompute_granularity") == "full":
            out.add("mtp+full_recompute")
    return out


def bugs_for(triggers: set[str], version: str | None = None) -> list[Bug]:
    """The known bugs of `version` (default: installed) that settings with these triggers would meet."""
    v = version or installed()
    if v is None:
        return []
    p = parse(v)
    return [b for b in BUGS if b.when in triggers and parse(b.first) <= p < parse(b.fixed)]
