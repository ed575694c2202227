"""The end-to-end benchmark's plots: accuracy over training wall-clock, and accuracy versus speed-up.

They need matplotlib (the ``plots`` extra); without it the benchmark writes its JSON and table
and says the plots were skipped.
"""

from __future__ import annotations

from pathlib import Path

from .._outputs import written_atomically
from ..errors import require

from ..train.recipe import STRATEGIES
from .report import TARGET_MARGIN_PT, keep_label

# One colour per strategy in every plot (tab10), full data in black.
COLORS = {name: ("black" if name == "full" else f"C{i}") for i, name in enumerate(STRATEGIES)}


def mean_curve(runs: list[dict]) -> tuple[list[float], list[float], list[float], list[float]]:
    """(seconds, mean accuracy, lowest, highest) per evaluation point over ``runs`` (the seeds of
    one strategy and keep): point i averages the runs' i-th points (the same epoch in each run), up
    to the shortest curve."""
    curves = [run["curve"] for run in runs if run["curve"]]
    if not curves:
        return [], [], [], []
    points = min(len(curve) for curve in curves)
    seconds = [sum(curve[i][0] for curve in curves) / len(curves) for i in range(points)]
    accs = [[curve[i][1] for curve in curves] for i in range(points)]
    return seconds, [sum(a) / len(a) for a in accs], [min(a) for a in accs], [max(a) for a in accs]


def plot_curves(runs: list[dict], path: Path, data: str = "Fashion-MNIST",
                evaluated_on: str = "Fashion-MNIST test"):
    """Accuracy on ``evaluated_on`` (the validation store) versus training wall-clock, one panel
    per keep ratio, one line per strategy: the mean over seeds, with a band from the lowest to the
    highest seed (every panel also draws the full-data runs of its keep block). Returns the figure
    (closed, after saving)."""
    plt = pyplot()

    keeps = sorted({r["keep"] for r in runs if r["strategy"] != "full"})
    if not keeps:  # only the baseline so far: nothing to compare yet
        return None
    seeds = sorted({r["seed"] for r in runs})
    fig, axes = plt.subplots(1, max(len(keeps), 1), figsize=(5 * max(len(keeps), 1), 4),
                             sharey=True, squeeze=False)
    full = [r for r in runs if r["strategy"] == "full"]
    for axis, keep in zip(axes[0], keeps):
        groups = {"full": [r for r in full if r.get("block") == keep] or full}
        for run in runs:
            if run["keep"] == keep and run["strategy"] != "full":
                groups.setdefault(run["strategy"], []).append(run)
        for strategy, group in groups.items():
            seconds, mean, low, high = mean_curve(group)
            if not seconds:
                continue
            width = 2 if strategy == "full" else 1.2
            color = COLORS.get(strategy)
            axis.plot(seconds, mean, marker=".", label=strategy, linewidth=width, color=color)
            if len({r["seed"] for r in group}) > 1:
                axis.fill_between(seconds, low, high, color=color, alpha=0.15, linewidth=0)
        axis.set_title(f"keep {keep_label(keep)}")
        axis.set_xlabel("training wall-clock (s)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{evaluated_on} accuracy (%)")
    _zoom_on_the_top(axes[0][0], runs)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    band = f"mean of {len(seeds)} seeds, band: lowest to highest" if len(seeds) > 1 else f"seed {seeds[0]}"
    fig.suptitle(f"{data}: accuracy on {evaluated_on} vs wall-clock\n({band})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return fig


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), or MissingExtraError."""
    require("matplotlib", "plots", "plotting the benchmark").use("Agg")
    return require("matplotlib.pyplot", "plots", "plotting the benchmark")


def _zoom_on_the_top(axis, runs):
    """Early epochs sit far below the end of training; show the range where methods differ, up to
    the highest point of any curve (a run that peaks mid-training and falls off must not be cut)."""
    finals = [r["final_acc"] for r in runs]
    highest = max([acc for r in runs for _, acc in r["curve"] if acc is not None] + finals)
    axis.set_ylim(min(finals) - 5, highest + 1)


def plot_frontier(summary: list[dict], path: Path, data: str = "Fashion-MNIST",
                  evaluated_on: str = "Fashion-MNIST test") -> None:
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
                      yerr=[r["acc_std"] or 0 for r in rows], label=strategy, capsize=3, **style)
        for row in rows:
            if strategy != "full":
                axis.annotate(keep_label(row["keep"]), (row["speedup"], row["acc_mean"]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
    full = next((r for r in summary if r["strategy"] == "full"), None)
    if full:
        axis.axhline(full["acc_mean"] - TARGET_MARGIN_PT, color="gray", linestyle="--",
                     linewidth=1, label=f"full − {TARGET_MARGIN_PT} pt")
    axis.set_xlabel("wall-clock speed-up vs full data (x)")
    axis.set_ylabel(f"final {evaluated_on} accuracy (%)")
    axis.set_title(f"{data}: accuracy vs speed-up (labels: keep ratio)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path) -> None:
    """Save through a temporary file (a failed write leaves the previous plot whole, not a
    truncated PNG), then free the figure."""
    import matplotlib.pyplot as plt

    try:
        with written_atomically(path, binary=True) as file:
            fig.savefig(file, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=120)
    finally:
        plt.close(fig)
