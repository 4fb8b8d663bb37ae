"""Wall-clock timing of candidates: one call, and the minimum over interleaved rounds.

The machines this runs on are shared and noisy, so the candidates of one group are timed in
interleaved rounds (each round calls every candidate once) and each keeps its fastest call.
Each round takes the candidates in a new (seeded) random order: a call is slower right after
one that allocated and freed a lot of memory (the freed pages go back to the system and come
back faulting), and a fixed order would charge that to the same candidate in every round.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from .candidate import Candidate
from .kernels import use_kernels


def call(candidate: Candidate) -> None:
    """Run ``candidate`` once, on its kernel set where it names one."""
    with use_kernels(candidate.kernels):
        candidate.run()


def time_call(candidate: Candidate) -> float:
    """Seconds of one call of ``candidate`` (its first, if nothing ran it before)."""
    start = time.perf_counter()
    call(candidate)
    return time.perf_counter() - start


def time_interleaved(candidates: Sequence[Candidate], repeats: int) -> dict[Candidate, float]:
    """Minimum wall time of each candidate over ``repeats`` interleaved rounds, after one warm-up call each.

    Each round calls the candidates in a shuffled order (seeded: the same orders in every run).

    Parameters
    ----------
    candidates
        The group, in the order of the rounds and of the result; their names must differ.
    repeats
        The number of rounds.

    Returns
    -------
    dict
        Seconds per candidate, in the order given.

    Examples
    --------
    >>> from .candidate import floor
    >>> times = time_interleaved([floor(lambda: None)], repeats=2)
    >>> [(candidate.name, seconds >= 0) for candidate, seconds in times.items()]
    [('exp floor', True)]
    """
    names = [candidate.name for candidate in candidates]
    if len(set(names)) != len(names):
        raise ValueError(f"candidate names must differ within a group: {names}")
    for candidate in candidates:
        call(candidate)
    best = dict.fromkeys(candidates, math.inf)
    order, shuffler = list(candidates), random.Random(0)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for candidate in order:
            best[candidate] = min(best[candidate], time_call(candidate))
    return best


def synchronized(fn: Callable[[], Any], synchronize: Callable[[], Any]) -> Callable[[], None]:
    """``fn`` followed by ``synchronize``: a GPU candidate's time then includes its device work."""

    def run() -> None:
        fn()
        synchronize()

    return run
