"""`hy3 plan --plot FILE.png`: per-GPU memory stacked by kind against the GPU's capacity, and the host
memory of the fullest node against the host's; for a search, the top layouts side by side, each labelled with
its parallel sizes, recompute and optimizer offload, each bar with its total."""

from __future__ import annotations

from pathlib import Path

from .files import write_new
from .layout import recompute_modules
from .memory import ACTIVATION_CALIBRATION
from .planner import Plan
from .search import recompute_name

PARTS = [("weights", "weights", "#4c72b0"), ("gradients", "gradients", "#55a868"),
         ("optimizer", "optimizer (GPU)", "#c44e52"),
         ("activations_calibrated", f"activations (x{ACTIVATION_CALIBRATION}, with backward)", "#8172b2"),
         ("reserve", "reserve", "#937860")]
HOST_PARTS = [("optimizer", "optimizer (host)", "#dd8452"), ("processes", "processes", "#8c8c8c"),
              ("dataloader", "dataloader", "#ccb974")]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stack(ax, labels: list[str], rows: list[dict], parts, capacity: float | None, what: str) -> None:
    bottom = [0.0] * len(rows)
    for key, label, color in parts:
        vals = [r[key] for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=label, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for x, total in enumerate(bottom):   # each bar's total above it
        ax.text(x, total, f"{total:.1f}", ha="center", va="bottom", fontsize=7)
    if capacity is not None:
        ax.axhline(capacity, color="black", linestyle="--", linewidth=1, label=f"{what} capacity {capacity:.1f} GiB")
    ax.set_ylabel("GiB")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _host_panel(ax, labels: list[str], plans: list[Plan]) -> None:
    rows = [p.worst_node.breakdown_gib() if p.nodes else {k: 0.0 for k, _, _ in HOST_PARTS} for p in plans]
    capacity = plans[0].host_capacity_gib
    _stack(ax, labels, rows, HOST_PARTS, capacity, "host")
    ax.set_title("host memory, fullest node" + ("" if capacity is not None else " (capacity not given)"), fontsize=9)


def _save(fig, path: Path) -> None:
    write_new(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def plan_figure(plan: Plan):
    """One recipe: every pipeline rank's GPU memory, and the fullest node's host memory."""
    plt = _pyplot()
    fig, (gpu, hostax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    _stack(gpu, [f"pp{r.pp_rank}" for r in plan.ranks], [r.breakdown_gib() for r in plan.ranks], PARTS,
           plan.capacity_gib, "GPU")
    gpu.set_title(f"{Path(plan.recipe.path).name}: {plan.layout.describe()}, {recompute_label(plan.recipe.args)}, "
                  f"{offload_label(plan)}, {plan.verdict}", fontsize=9)
    _host_panel(hostax, ["fullest node"], [plan])
    fig.tight_layout()
    return fig


def plot_plan(plan: Plan, path: str | Path) -> None:
    _save_and_close(plan_figure(plan), path)


def recompute_label(args: dict) -> str:
    """As the search's table names it (`recompute full`), else spelled out from the arguments."""
    name = recompute_name(args)
    if name != "recompute as given":
        return name
    gran = args.get("recompute_granularity", "selective")
    if gran in (None, "none"):
        return "no recompute"
    if gran == "full":
        return f"recompute full ({args.get('recompute_method')} {args.get('recompute_num_layers')})"
    return f"recompute {'+'.join(recompute_modules(args))}"


def offload_label(plan: Plan) -> str:
    f = plan.precision.offload
    return f"offload {f:.0%}" if f else "no offload"


def search_label(rank: int, plan: Plan) -> str:
    """What tells two layouts apart: parallel sizes, recompute, optimizer offload."""
    lay = plan.layout
    vpp = f"x{lay.vpp}" if lay.vpp > 1 else ""
    return (f"#{rank}\nTP{lay.tp} PP{lay.pp}{vpp}\nCP{lay.cp} EP{lay.ep}\nETP{lay.etp} DP{lay.dp}\n"
            f"{recompute_label(plan.recipe.args).replace('recompute ', 'rc ')}\n{offload_label(plan)}")


def search_figure(plans: list[Plan], title: str):
    """A search: the fullest GPU and the fullest node of each of the top layouts, best first."""
    plt = _pyplot()
    fig, (gpu, hostax) = plt.subplots(2, 1, figsize=(max(7, 1.2 * len(plans) + 3), 8.5))
    labels = [search_label(i + 1, p) for i, p in enumerate(plans)]
    _stack(gpu, labels, [p.worst.breakdown_gib() for p in plans], PARTS, plans[0].capacity_gib, "GPU")
    gpu.set_title(f"{title}: fullest GPU of each layout (best first)", fontsize=9)
    gpu.tick_params(axis="x", labelsize=6)
    _host_panel(hostax, labels, plans)
    hostax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    return fig


def plot_search(plans: list[Plan], path: str | Path, title: str) -> None:
    _save_and_close(search_figure(plans, title), path)


def _save_and_close(fig, path: str | Path) -> None:
    try:
        _save(fig, Path(path))
    finally:
        _pyplot().close(fig)
