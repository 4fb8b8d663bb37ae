"""``results.png``: the training step of every group as a bar chart, in multiples of the exp floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .candidate import STEP_FWD_BWD
from .results import Group


def write_chart(groups: list[Group], path: Path) -> None:
    """Bar chart of time over the exp floor for the JS training step (fwd+bwd), per library and shape.

    One cluster of bars per group, one bar per implementation.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (f"{group.library}\n{group.shape.split(' (')[0]}", candidate.implementation, seconds / group.floor)
        for group in groups
        for candidate, seconds in group.times.items()
        if candidate.kind == STEP_FWD_BWD
    ]
    labels = list(dict.fromkeys(label for label, _, _ in rows))
    series = sorted({implementation for _, implementation, _ in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(labels)), 4))
    width = 0.8 / max(len(series), 1)
    for i, implementation in enumerate(series):
        values = [next((r[2] for r in rows if r[0] == label and r[1] == implementation), 0.0) for label in labels]
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=implementation)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("time / exp floor (lower is better)")
    ax.set_title("JS training step, forward + backward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
