"""Recipes, the layout/memory planner, the layout search and the `megatron` argument check behind
`hy3 plan` and `hy3 launch`.

The names below load on first use, so that the model parts (memory, cost, params) import without
PyYAML: benchmarks/gpu_moe_layer.py runs them on a GPU machine that has little more than CUDA torch.
"""

from importlib import import_module

_WHERE = {"Plan": "planner", "plan_recipe": "planner", "Cluster": "recipe", "Recipe": "recipe",
          "load_recipe": "recipe", "with_overrides": "recipe", "format_plan": "report", "plan_json": "report"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_WHERE[name]}", __name__), name)
