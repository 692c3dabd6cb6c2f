"""The accuracy-against-compute plot written next to metrics.jsonl."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def plot_accuracy_vs_flops(records: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(r["flops"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o")
    ax.set_xlabel("cumulative forward FLOPs (all devices)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
