"""The measurements of one run, typed, and their ``results.json`` form."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .candidate import Candidate
from .passes import PassCount
from .scaling import sweep_exponents


@dataclass(frozen=True)
class Group:
    """The candidates of one library and shape, timed together (interleaved).

    Parameters
    ----------
    library
        ``"torch"``, ``"torch-cuda"``, ``"jax"``, ``"numpy"`` or ``"cupy"``.
    shape
        The label of the shape, e.g. ``"pose (32, 17, 64, 64)"``.
    times
        Seconds per candidate, in the order of the report; one of them is the floor.
    """

    library: str
    shape: str
    times: Mapping[Candidate, float]

    def seconds(self, implementation: str, kind: str) -> float | None:
        """The time of the candidate of ``implementation`` and ``kind``, or ``None`` if the group has none."""
        for candidate, seconds in self.times.items():
            if candidate.implementation == implementation and candidate.kind == kind:
                return seconds
        return None

    @property
    def floor(self) -> float:
        """The time of the group's floor (one ``exp`` over the logits)."""
        for candidate, seconds in self.times.items():
            if candidate.is_floor:
                return seconds
        raise ValueError(f"the {self.library} group of {self.shape} has no floor")


@dataclass(frozen=True)
class TorchStudies:
    """The PyTorch-only measurements, on the first shape of the run and over the size sweep.

    Parameters
    ----------
    shape
        The shape of the saved-bytes and compiled measurements, as ``str(tuple(shape))``.
    saved_bytes
        Bytes autograd keeps for backward per implementation, in multiples of the logits' bytes.
    compiled_first_call
        Seconds of the first compiled training step (the compilation).
    compiled
        The group of the compiled kernels, the floor and dsntnn.
    sweep
        Seconds of the step per candidate, by number of logits.
    passes
        Heatmap-sized reads and writes per implementation and kind (``"soft_argmax fwd+bwd"``,
        ``"step fwd+bwd"``), on the same shape.
    """

    shape: str
    saved_bytes: dict[str, float]
    compiled_first_call: float
    compiled: Group
    sweep: dict[int, dict[Candidate, float]]
    passes: dict[str, dict[str, PassCount]] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteResults:
    """Everything one run measured.

    Parameters
    ----------
    groups
        One per (shape, library), in run order.
    environment
        Library versions, repeats and threads.
    native_first_call
        Seconds to build or load the native kernels, if they are available.
    torch
        The PyTorch-only measurements, if PyTorch is installed.
    """

    groups: list[Group]
    environment: dict[str, Any]
    native_first_call: float | None = None
    torch: TorchStudies | None = None

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json``: candidates by name, times in seconds."""
        result: dict[str, Any] = {
            "groups": [
                {"library": group.library, "shape": group.shape, "times": _by_name(group.times)}
                for group in self.groups
            ],
            "sweep": {},
            "compiled": {},
            "saved_bytes": {},
            "environment": self.environment,
        }
        studies = self.torch
        if studies is not None:
            result["sweep"] = {str(size): _by_name(times) for size, times in studies.sweep.items()}
            result["compiled"] = compiled_json(studies.compiled_first_call, studies.compiled)
            result["saved_bytes"] = studies.saved_bytes | {"shape": studies.shape}
        if self.native_first_call is not None:
            result["native_first_call"] = self.native_first_call
        if studies is not None:
            result["sweep_exponent"] = _by_name(sweep_exponents(studies.sweep))
            result["sweep_exponent_large"] = _by_name(sweep_exponents(studies.sweep, last=3))
            result["passes"] = {
                implementation: {kind: dataclasses.asdict(count) for kind, count in kinds.items()}
                for implementation, kinds in studies.passes.items()
            }
        return result


def compiled_json(first_call: float, compiled: Group) -> dict[str, Any]:
    """The ``compiled`` entry of ``results.json``: first call, times by name, shape."""
    return {"first call (s)": first_call} | _by_name(compiled.times) | {"shape": compiled.shape}


def _by_name(values: Mapping[Candidate, float]) -> dict[str, float]:
    return {candidate.name: value for candidate, value in values.items()}
