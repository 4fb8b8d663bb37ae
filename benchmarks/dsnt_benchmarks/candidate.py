"""The candidate: one timed callable of a benchmark group, described by what it computes and whose code runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SOFT_ARGMAX_FWD = "soft_argmax fwd"
SOFT_ARGMAX_FWD_BWD = "soft_argmax fwd+bwd"
STEP_FWD = "step fwd"
STEP_FWD_BWD = "step fwd+bwd"
FLOOR = "floor"
#: What a candidate computes: ``soft_argmax`` or the JS training step ("step"), forward only
#: or forward and backward to the logits; or the reference of its group, one ``exp`` ("floor").
KINDS = (SOFT_ARGMAX_FWD, SOFT_ARGMAX_FWD_BWD, STEP_FWD, STEP_FWD_BWD, FLOOR)


@dataclass(frozen=True)
class Candidate:
    """One callable to time, and what it stands for.

    Two candidates are equal (and hash alike) when they have the same implementation, kind
    and kernels; ``run`` takes no part in the comparison.

    Parameters
    ----------
    implementation
        Whose code runs: ``"ours"`` (dsnt-core, default path), ``"native"`` and ``"compiled"``
        (dsnt-core on opt-in kernels), ``"naive"`` (the unfused composition of dsnt-core's
        building blocks), ``"dsntnn"``, ``"kornia"``; ``"exp"`` for the floor.
    kind
        What it computes, one of `KINDS`.
    run
        The work, called without arguments; its result is discarded.
    kernels
        A kernel set of ``dsnt_core.use_kernels`` (``"array-api"``, ``"torch-native"``,
        ``"torch-compile"``, ...) switched on around every call, or ``None`` to leave the
        current setting alone.

    Examples
    --------
    >>> candidate = Candidate("ours", STEP_FWD_BWD, run=lambda: None)
    >>> candidate.name, candidate.is_floor
    ('ours step fwd+bwd', False)
    >>> floor(lambda: None).name
    'exp floor'
    """

    implementation: str
    kind: str
    run: Callable[[], Any] = field(compare=False, repr=False)
    kernels: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if " " in self.implementation:
            raise ValueError(f"implementation must be one word, got {self.implementation!r}")

    @property
    def name(self) -> str:
        """The label of the reports and ``results.json``: implementation and kind."""
        return f"{self.implementation} {self.kind}"

    @property
    def is_floor(self) -> bool:
        """Whether this is the reference of its group, one ``exp`` over the logits."""
        return self.kind == FLOOR


def floor(run: Callable[[], Any]) -> Candidate:
    """The reference of a group: ``run`` computes one ``exp`` over the same logits, in the same library."""
    return Candidate("exp", FLOOR, run)
