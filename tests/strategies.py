"""Hypothesis strategies for heatmap stacks, drawn as NumPy arrays and converted per backend."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def heatmap_shapes(draw, ndim=None, min_side=1, max_side=7):
    """(shape, ndim) with 0-2 leading axes and ``ndim`` spatial axes."""
    ndim = draw(st.integers(1, 3)) if ndim is None else ndim
    leading = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    spatial = draw(st.lists(st.integers(min_side, max_side), min_size=ndim, max_size=ndim))
    return (*leading, *spatial), ndim


@st.composite
def logits_arrays(draw, ndim=None, min_side=1, max_side=7, scale=5.0):
    """(logits, ndim): float64 logits with values in [-scale, scale]."""
    shape, ndim = draw(heatmap_shapes(ndim=ndim, min_side=min_side, max_side=max_side))
    values = draw(hnp.arrays(np.float64, shape, elements=st.floats(-scale, scale, allow_nan=False, width=64)))
    return values, ndim


@st.composite
def targets_for(draw, shape, ndim, limit=0.9):
    """Target coordinates (..., ndim) for heatmaps of ``shape``."""
    return draw(
        hnp.arrays(np.float64, (*shape[: len(shape) - ndim], ndim), elements=st.floats(-limit, limit, width=64))
    )
