"""Recipes, the layout/memory planner and the `megatron` argument check behind `hy3 plan` and `hy3 launch`."""

from .planner import Plan, format_plan, plan_json, plan_recipe
from .recipe import Cluster, Recipe, load_recipe, with_overrides

__all__ = ["Cluster", "Plan", "Recipe", "format_plan", "load_recipe", "plan_json", "plan_recipe", "with_overrides"]
