"""Reproduce the DSNT paper's comparisons on synthetic keypoints, on 2 CPU cores in minutes.

1. Output strategies: DSNT (JS regulariser) vs fully connected regression vs heatmap
   regression with argmax decoding, trained on keypoints anywhere in the image, and trained
   with both shapes kept in the left part of the image (x < 0.1) then tested on the right
   part (x > 0.1): how each generalises to positions it never saw.
2. Regularisers for DSNT: none vs variance vs KL vs JS.

Run: ``python examples/training_study.py`` (fixed seeds; writes docs/study/results.md and
docs/study/results.png). Every model has the same convolutional trunk and the same steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from dsnt_apps.synthetic import keypoint_images
from dsnt_apps.training import mean_pixel_error

import dsnt_core

SIZE = 64
HEATMAP = 16
POINTS = 2
BATCH = 32


def trunk() -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for cin, cout, stride in [(1, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]:
        layers += [torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers)


class Model(torch.nn.Module):
    """Shared trunk with one of three output strategies."""

    def __init__(self, strategy: str) -> None:
        super().__init__()
        self.strategy = strategy
        self.features = trunk()
        if strategy == "fc":
            self.head = torch.nn.Linear(64 * HEATMAP * HEATMAP, 2 * POINTS)
        else:
            self.head = torch.nn.Conv2d(64, POINTS, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        if self.strategy == "fc":
            return self.head(features.flatten(1)).view(-1, POINTS, 2)
        return self.head(features)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)
        if self.strategy == "fc":
            return out
        if self.strategy == "dsnt":
            return dsnt_core.soft_argmax(out)
        flat = out.flatten(2).argmax(-1)  # heatmap regression: argmax pixel, decoded to its centre
        rows, cols = flat // HEATMAP, flat % HEATMAP
        pixel = torch.stack([cols, rows], -1).to(out.dtype)
        return dsnt_core.pixel_to_normalized(pixel, (HEATMAP, HEATMAP))


def loss_fn(
    model: Model, images: torch.Tensor, points: torch.Tensor, regularizer: str | None, reg_weight: float
) -> torch.Tensor:
    out = model(images)
    if model.strategy == "dsnt":
        return dsnt_core.dsnt_loss(out, points, sigma=1.0, regularizer=regularizer, reg_weight=reg_weight)
    if model.strategy == "fc":
        return dsnt_core.average_loss(dsnt_core.euclidean_loss(out, points))
    target = dsnt_core.gaussian_heatmaps(points, (HEATMAP, HEATMAP), 1.0, normalize=False)
    return torch.mean((out - target) ** 2)


def run(
    strategy: str, regularizer: str | None, train_range, test_range, steps: int, seed: int, reg_weight: float = 1.0
) -> dict:
    torch.manual_seed(seed)
    train_images, train_points = keypoint_images(BATCH * 64, size=SIZE, seed=seed, x_range=train_range)
    test_images, test_points = keypoint_images(256, size=SIZE, seed=seed + 1, x_range=test_range)
    model = Model(strategy)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        batch = rng.integers(0, len(train_images), size=BATCH)
        optimizer.zero_grad()
        images, points = torch.from_numpy(train_images[batch]), torch.from_numpy(train_points[batch])
        loss = loss_fn(model, images, points, regularizer, reg_weight)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model.predict(torch.from_numpy(test_images)).numpy()
    return {"error_px": mean_pixel_error(pred, test_points, SIZE), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="docs/study")
    args = parser.parse_args()
    torch.set_num_threads(2)
    full, left, right = (-0.8, 0.8), (-0.8, 0.1), (0.1, 0.8)
    experiments = {
        "DSNT (JS)": ("dsnt", "js"),
        "fully connected": ("fc", None),
        "heatmap + argmax": ("heatmap", None),
    }
    results: dict[str, dict] = {}
    for name, (strategy, regularizer) in experiments.items():
        results[name] = {
            "all positions": run(strategy, regularizer, full, full, args.steps, args.seed),
            "unseen positions": run(strategy, regularizer, left, right, args.steps, args.seed),
        }
        print(name, results[name], flush=True)
    # dsntnn's variance regulariser is in pixel units: (n / 2)^4 = 4096 times the paper's
    # normalised form on 16x16 heatmaps, so the paper's lambda = 1 is reg_weight = (2 / 16)^4.
    variants = {
        "DSNT (no regulariser)": (None, 1.0),
        "DSNT (var, reg_weight 1)": ("var", 1.0),
        "DSNT (var, reg_weight (2/16)^4)": ("var", (2 / HEATMAP) ** 4),
        "DSNT (KL)": ("kl", 1.0),
    }
    for name, (regularizer, weight) in variants.items():
        results[name] = {"all positions": run("dsnt", regularizer, full, full, args.steps, args.seed, weight)}
        print(name, results[name], flush=True)

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"Mean held-out error in pixels of 64x64 images ({args.steps} steps, batch {BATCH}, seed {args.seed}).",
        "",
        "| model | all positions | trained x < 0.1, tested x > 0.1 | train time (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in results.items():
        unseen = row.get("unseen positions")
        lines.append(
            f"| {name} | {row['all positions']['error_px']:.2f} | "
            f"{unseen['error_px']:.2f} | {row['all positions']['seconds']:.0f} |"
            if unseen
            else f"| {name} | {row['all positions']['error_px']:.2f} | - | {row['all positions']['seconds']:.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [results[n]["all positions"]["error_px"] for n in names], 0.4, label="all positions")
    ax.bar(
        x + 0.2,
        [results[n].get("unseen positions", {}).get("error_px", 0.0) for n in names],
        0.4,
        label="unseen positions",
    )
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("mean error (pixels, log scale)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)


if __name__ == "__main__":
    main()
