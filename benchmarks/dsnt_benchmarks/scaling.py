"""How the time of a candidate grows with the number of logits: a power-law fit over the size sweep."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .candidate import Candidate


def sweep_exponents(sweep: Mapping[int, Mapping[Candidate, float]], last: int | None = None) -> dict[Candidate, float]:
    """Fitted exponent ``a`` of ``time ~ size ** a`` per candidate of the size sweep.

    Parameters
    ----------
    sweep
        Seconds per candidate, by number of logits, in increasing size; every size has the
        candidates of the first.
    last
        Fit only the ``last`` largest sizes, where the per-element work outweighs the fixed
        cost of a call; ``None`` fits all.

    Returns
    -------
    dict
        The exponent per candidate; empty with fewer than two sizes.

    Examples
    --------
    >>> from .candidate import STEP_FWD_BWD, Candidate
    >>> ours = Candidate("ours", STEP_FWD_BWD, run=lambda: None)
    >>> exponents = sweep_exponents({100: {ours: 1.0}, 400: {ours: 2.0}})
    >>> round(exponents[ours], 6)
    0.5
    """
    points = list(sweep.items())[-last:] if last else list(sweep.items())
    if len(points) < 2:
        return {}
    sizes = np.log([float(size) for size, _ in points])
    candidates = points[0][1].keys()
    return {c: float(np.polyfit(sizes, np.log([times[c] for _, times in points]), 1)[0]) for c in candidates}
