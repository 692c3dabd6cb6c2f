"""The accuracy-against-compute plot written next to metrics.jsonl.

Drawn on a ``Figure`` with the Agg canvas directly: no pyplot and no ``matplotlib.use()``, so
a notebook that runs a job keeps its own (inline) backend and figures."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def accuracy_figure(records: Sequence[dict], title: str):
    """A matplotlib ``Figure`` of validation accuracy against cumulative forward FLOPs (show it
    in a notebook, or save it)."""
    from matplotlib.figure import Figure

    points = [(r["flops"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    if points:
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o")
    ax.set_xlabel("cumulative forward FLOPs (all devices)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_flops(records: Sequence[dict], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = accuracy_figure(records, title)
    FigureCanvasAgg(fig)  # attaches the Agg canvas to this figure only
    fig.savefig(path, dpi=120)
