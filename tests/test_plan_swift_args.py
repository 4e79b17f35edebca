"""Reading `megatron sft` / `megatron export` arguments from ms-swift's installed source, without importing it."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from megatron_hy.swift.args import check_args, command_fields, transformer_config_fields


def test_fields_come_from_the_whole_class_hierarchy():
    f = command_fields("sft")
    # one field from each layer of MegatronSftArguments' bases
    owners = {"add_version": "MegatronSftArguments", "skip_megatron_init": "MegatronBaseArguments",
              "micro_batch_size": "MegatronArguments", "lora_rank": "MegatronTunerMixin",
              "rlhf_type": "RLHFMegatronArgumentsMixin", "dataset": "DataArguments", "max_length": "TemplateArguments",
              "packing": "BaseArguments", "use_ray": "RLHFMegatronArgumentsMixin"}
    for name, owner in owners.items():
        assert f[name].owner == owner, (name, f[name].owner)


def test_the_most_derived_definition_wins():
    # BaseArguments says `tuner_type: str`; MegatronTunerMixin, earlier in the MRO, narrows it to a Literal
    f = command_fields("sft")["tuner_type"]
    assert f.choices == ("lora", "full", "lora_llm")


def test_field_set_matches_a_plain_ast_scan_of_the_megatron_arguments_file():
    # every annotated attribute of MegatronArguments in the installed file is a flag we know about
    root = Path(importlib.util.find_spec("swift").submodule_search_locations[0])
    tree = ast.parse((root / "megatron/arguments/megatron_args.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MegatronArguments")
    names = {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
    assert len(names) > 150 and names <= set(command_fields("sft"))


def test_types_and_choices_are_checked():
    assert check_args({"micro_batch_size": 2, "sequence_parallel": True, "recompute_modules": ["moe_act"],
                       "lr": 1e-5, "moe_aux_loss_coeff": 0.0, "recompute_method": "uniform"}) == []
    problems = check_args({"micro_batch_size": "2", "sequence_parallel": "yes", "recompute_method": "everything",
                           "max_length": [1, 2]})
    assert len(problems) == 4
    assert any("recompute_method" in p and "'uniform'" in p for p in problems)


def test_unknown_flags_get_a_suggestion_and_the_line():
    (p,) = check_args({"expert_paralel_size": 8}, where="r.yaml: args", lines={"expert_paralel_size": 12})
    assert "r.yaml: args.expert_paralel_size (line 12)" in p and "no argument" in p


def test_megatron_extra_kwargs_keys_are_transformer_config_fields():
    assert "moe_router_bias_update_rate" in transformer_config_fields()
    (p,) = check_args({"megatron_extra_kwargs": {"moe_router_bias_update": 0.0}})
    assert "did you mean 'moe_router_bias_update_rate'" in p
    (p,) = check_args({"megatron_extra_kwargs": {"moe_router_score_function": "relu"}})
    assert "'sigmoid'" in p


def test_export_has_its_own_flags():
    assert "to_hf" in command_fields("export") and "to_hf" not in command_fields("sft")
    assert check_args({"to_hf": True, "mcore_model": "/x"}, "export") == []
