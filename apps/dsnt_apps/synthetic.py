"""Synthetic keypoint images: a disk and a square at random positions on a noisy background."""

from __future__ import annotations

import numpy as np

POINT_NAMES = ("disk centre", "square centre")


def keypoint_images(
    count: int,
    *,
    size: int = 64,
    seed: int = 0,
    x_range: tuple[float, float] = (-0.8, 0.8),
    noise: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """Images (count, 1, size, size) float32 and their keypoints (count, 2, 2) float32.

    Each image holds a disk (radius 5 pixels) and a square (side 9 pixels), whose centres are
    the two keypoints, in normalised (x, y) pixel-centre coordinates. ``x_range`` limits the
    horizontal position of both shapes (to test generalisation to unseen positions).

    Examples
    --------
    >>> images, points = keypoint_images(4, size=32, seed=1)
    >>> images.shape, points.shape, bool(abs(points).max() < 1)
    ((4, 1, 32, 32), (4, 2, 2), True)
    """
    rng = np.random.default_rng(seed)
    margin = 6.0 / size
    low_x, high_x = max(x_range[0], -1 + 2 * margin), min(x_range[1], 1 - 2 * margin)
    points = np.stack(
        [
            rng.uniform(low_x, high_x, size=(count, 2)),
            rng.uniform(-1 + 2 * margin, 1 - 2 * margin, size=(count, 2)),
        ],
        axis=-1,
    )  # (count, 2 points, (x, y))
    pixels = ((points + 1) * size - 1) / 2
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    images = rng.normal(scale=noise, size=(count, 1, size, size))
    for i in range(count):
        (dx, dy), (sx, sy) = pixels[i]
        images[i, 0] += ((cols - dx) ** 2 + (rows - dy) ** 2 <= 5.0**2).astype(np.float64)
        images[i, 0] += ((np.abs(cols - sx) <= 4.5) & (np.abs(rows - sy) <= 4.5)).astype(np.float64)
    return images.astype(np.float32), points.astype(np.float32)
