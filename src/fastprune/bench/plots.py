"""The end-to-end benchmark's plots: accuracy over training wall-clock, and accuracy versus speed-up.

They need matplotlib (the ``plots`` extra); without it the benchmark writes its JSON and table
and says the plots were skipped.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import require

from ..train.recipe import STRATEGIES
from .report import TARGET_MARGIN_PT

# One colour per strategy in every plot (tab10), full data in black.
COLORS = {name: ("black" if name == "full" else f"C{i}") for i, name in enumerate(STRATEGIES)}


def plot_curves(runs: list[dict], path: Path, data: str = "Fashion-MNIST") -> None:
    """Accuracy versus training wall-clock, one panel per keep ratio, one line per strategy
    (seed 0 of each; every panel also draws the full-data run of its keep block)."""
    plt = pyplot()

    keeps = sorted({r["keep"] for r in runs if r["strategy"] != "full"})
    if not keeps:  # only the baseline so far: nothing to compare yet
        return
    first_seed = min(r["seed"] for r in runs)
    fig, axes = plt.subplots(1, max(len(keeps), 1), figsize=(5 * max(len(keeps), 1), 4),
                             sharey=True, squeeze=False)
    full = [r for r in runs if r["strategy"] == "full" and r["seed"] == first_seed]
    for axis, keep in zip(axes[0], keeps):
        shown = [r for r in full if r.get("block") == keep][:1] or full[:1]
        shown += [r for r in runs if r["keep"] == keep and r["seed"] == first_seed
                        and r["strategy"] != "full"]
        for run in shown:
            seconds, accs = zip(*run["curve"])
            width = 2 if run["strategy"] == "full" else 1.2
            axis.plot(seconds, accs, marker=".", label=run["strategy"], linewidth=width,
                      color=COLORS.get(run["strategy"]))
        axis.set_title(f"keep {keep}")
        axis.set_xlabel("training wall-clock (s)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    _zoom_on_the_top(axes[0][0], runs)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{data}: accuracy vs wall-clock (seed {first_seed})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), or MissingExtraError."""
    require("matplotlib", "plots", "plotting the benchmark").use("Agg")
    return require("matplotlib.pyplot", "plots", "plotting the benchmark")


def _zoom_on_the_top(axis, runs):
    """Early epochs sit far below the end of training; show the range where methods differ."""
    finals = [r["final_acc"] for r in runs]
    axis.set_ylim(min(finals) - 5, max(finals) + 1)


def plot_frontier(summary: list[dict], path: Path, data: str = "Fashion-MNIST") -> None:
    """Final accuracy (mean ± std over seeds) versus speed-up, one series per strategy."""
    plt = pyplot()

    fig, axis = plt.subplots(figsize=(6, 4.5))
    for strategy in dict.fromkeys(row["strategy"] for row in summary):
        rows = sorted((r for r in summary if r["strategy"] == strategy and r["speedup"]),
                      key=lambda r: r["speedup"])
        if not rows:
            continue
        style = {"marker": "*", "markersize": 12} if strategy == "full" else {"marker": "o"}
        style["color"] = COLORS.get(strategy)
        axis.errorbar([r["speedup"] for r in rows], [r["acc_mean"] for r in rows],
                      yerr=[r["acc_std"] for r in rows], label=strategy, capsize=3, **style)
        for row in rows:
            if strategy != "full":
                axis.annotate(f"{row['keep']:.1f}", (row["speedup"], row["acc_mean"]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
    full = next((r for r in summary if r["strategy"] == "full"), None)
    if full:
        axis.axhline(full["acc_mean"] - TARGET_MARGIN_PT, color="gray", linestyle="--",
                     linewidth=1, label=f"full − {TARGET_MARGIN_PT} pt")
    axis.set_xlabel("wall-clock speed-up vs full data (x)")
    axis.set_ylabel("final test accuracy (%)")
    axis.set_title(f"{data}: accuracy vs speed-up (labels: keep ratio)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
