"""Regenerate the figures of the documentation: ``python docs/make_figures.py``."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dsnt_core  # noqa: E402

OUT = Path(__file__).parent / "figures"


def conventions(n: int = 4) -> None:
    centres = dsnt_core.normalized_linspace(n).tolist()
    corners = dsnt_core.normalized_linspace(n, align_corners=True).tolist()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, values, title in (
        (axes[0], centres, "pixel centres (default; paper, dsntnn)"),
        (axes[1], corners, "align_corners=True (kornia)"),
    ):
        edges = [-1 + 2 * i / n for i in range(n + 1)]
        if title.startswith("align"):
            step = 2 / (n - 1)
            edges = [-1 - step / 2 + step * i for i in range(n + 1)]
        for e in edges:
            ax.axvline(e, color="0.8", lw=1)
            ax.axhline(e, color="0.8", lw=1)
        xs = [x for x in values for _ in values]
        ys = [y for _ in values for y in values]
        ax.scatter(xs, ys, c="tab:red", s=25, zorder=3)
        for j, x in enumerate(values):
            ax.annotate(
                f"{x:+.2f}", (x, values[0]), textcoords="offset points", xytext=(0, -16), ha="center", fontsize=8
            )
            ax.annotate(f"j={j}", (x, values[-1]), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        ax.add_patch(plt.Rectangle((-1, -1), 2, 2, fill=False, lw=2))
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(1.5, -1.5)
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (last axis, W)")
        ax.set_ylabel("y (axis -2, H)")
    fig.suptitle(f"{n}x{n} heatmap: the black square is (-1, 1)^2; red dots are the pixel coordinates")
    fig.tight_layout()
    fig.savefig(OUT / "conventions.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    conventions()
