"""`hy3 plan --plot FILE.png`: per-GPU memory stacked by kind against the GPU's capacity, and the host
memory of the fullest node against the host's; for a search, the top layouts side by side."""

from __future__ import annotations

from pathlib import Path

from .files import write_new
from .memory import ACTIVATION_CALIBRATION
from .planner import Plan

PARTS = [("weights", "weights", "#4c72b0"), ("gradients", "gradients", "#55a868"),
         ("optimizer", "optimizer (GPU)", "#c44e52"),
         ("activations_calibrated", f"activations (x{ACTIVATION_CALIBRATION})", "#8172b2"),
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


def plot_plan(plan: Plan, path: str | Path) -> None:
    """One recipe: every pipeline rank's GPU memory, and the fullest node's host memory."""
    plt = _pyplot()
    fig, (gpu, hostax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    _stack(gpu, [f"pp{r.pp_rank}" for r in plan.ranks], [r.breakdown_gib() for r in plan.ranks], PARTS,
           plan.capacity_gib, "GPU")
    gpu.set_title(f"{Path(plan.recipe.path).name}: {plan.layout.describe()}, {plan.verdict}", fontsize=9)
    _host_panel(hostax, ["fullest node"], [plan])
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)


def _short(plan: Plan) -> str:
    lay = plan.layout
    vpp = f"x{lay.vpp}" if lay.vpp > 1 else ""
    off = f"\noffload {plan.precision.offload:.0%}" if plan.precision.offload else ""
    return f"TP{lay.tp} PP{lay.pp}{vpp}\nCP{lay.cp} EP{lay.ep}\nETP{lay.etp} DP{lay.dp}{off}"


def plot_search(plans: list[Plan], path: str | Path, title: str) -> None:
    """A search: the fullest GPU and the fullest node of each of the top layouts, best first."""
    plt = _pyplot()
    fig, (gpu, hostax) = plt.subplots(2, 1, figsize=(max(7, 1.1 * len(plans) + 3), 7.5))
    labels = [f"#{i + 1}\n{_short(p)}" for i, p in enumerate(plans)]
    _stack(gpu, labels, [p.worst.breakdown_gib() for p in plans], PARTS, plans[0].capacity_gib, "GPU")
    gpu.set_title(f"{title}: fullest GPU of each layout (best first)", fontsize=9)
    gpu.tick_params(axis="x", labelsize=6)
    _host_panel(hostax, labels, plans)
    hostax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
