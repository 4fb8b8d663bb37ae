"""The CuPy group (where a GPU is usable): the NumPy candidates on the device."""

from __future__ import annotations

from dataclasses import replace

from .candidate import Candidate
from .numpy_candidates import explicit_gradient_candidates, random_inputs
from .timing import synchronized


def cupy_candidates(shape: tuple[int, ...]) -> list[Candidate]:
    """The ``cupy`` group of ``shape``: the NumPy inputs on the device, every candidate ended by a synchronisation."""
    import cupy

    logits, target = (cupy.asarray(a) for a in random_inputs(shape))
    candidates = explicit_gradient_candidates(cupy.exp, logits, target)
    return [replace(c, run=synchronized(c.run, cupy.cuda.Device().synchronize)) for c in candidates]
