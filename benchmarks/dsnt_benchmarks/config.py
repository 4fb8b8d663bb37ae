"""What the suite measures: the shapes, the size sweep, the regulariser width and the thread count."""

from __future__ import annotations

#: The groups of the full run, by label: (batch, points, *spatial).
SHAPES: dict[str, tuple[int, ...]] = {
    "pose (32, 17, 64, 64)": (32, 17, 64, 64),
    "whole-body (8, 133, 64, 48)": (8, 133, 64, 48),
    "3-D (4, 17, 16, 64, 64)": (4, 17, 16, 64, 64),
    "many small (256, 1, 32, 32)": (256, 1, 32, 32),
}
#: The shape of a quick run (``--quick``).
QUICK_SHAPE = "pose (32, 17, 64, 64)"
#: The size sweep of the torch training step.
SWEEP: list[tuple[int, ...]] = [(8, 17, n, n) for n in (16, 32, 64, 128, 256)]
#: Width of the JS regulariser's target Gaussian, in pixels.
SIGMA = 1.0
#: PyTorch's intra-op threads during the run.
THREADS = 2
#: Interleaved rounds of a full and of a quick run.
REPEATS = 25
QUICK_REPEATS = 5
