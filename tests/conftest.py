"""Shared fixtures: the cross-backend ``backend`` fixture, the ``kernels`` fixture, their markers
and the hypothesis profiles.

* ``backend``: every entry of ``_support.BACKEND_NAMES``, each skipped with its reason where it
  cannot run: the libraries numpy, array_api_strict, torch and jax on the CPU, cupy (on its
  GPU), and the GPU entries ``torch-cuda`` (torch tensors on a CUDA device) and ``jax-gpu`` (JAX
  arrays on a GPU), skipped on machines without one ("no CUDA GPU is usable: ...").
  ``@pytest.mark.backends("torch", "jax")`` on a test (or ``pytestmark`` of a module) narrows
  it to those libraries, **on every device**: a library's name picks its GPU entry too
  ("torch" picks torch and torch-cuda, "jax" picks jax and jax-gpu). A test that is about the
  CPU by nature (the CPU kernels, ``meta`` tensors, a CPU-only reference library) says
  ``@pytest.mark.backends("torch", gpu=False)``, which leaves the GPU entries out (cupy
  included); ``@pytest.mark.backends("torch-cuda")`` names one GPU entry alone.
* The GPU entries behave as their library: ``backend.name`` is the library (``"torch"`` on
  ``torch-cuda`` too), so a test's branches on the library hold on every device, and
  ``backend.entry`` is the entry (the test id). ``backend.asarray`` makes arrays on the entry's
  device (``backend.device``), ``backend.assert_close`` checks that results are on it, and
  ``backend.to_numpy`` brings them back. The JAX entries run inside ``jax.default_device`` of
  their device (JAX's own default is a GPU wherever one is usable); PyTorch's default device
  stays the CPU, so library code that makes a tensor without ``device=`` fails on torch-cuda as
  it would for users. (Chosen over a separate library attribute: the many ``backend.name ==
  "torch"`` branches of the tests need no change and new ones hold on the GPU by default.)
* ``kernels``: runs the test inside ``with dsnt_core.use_kernels(name):`` and gives the
  implementation; every implementation by default, ``@pytest.mark.kernels("torch-native")`` to
  choose. Skipped with the reason where the implementation cannot run. A test that takes both
  fixtures gets each implementation with the backends it serves only, and on a GPU entry is
  skipped where the implementation does not take that device's arrays (the CPU kernels).
* ``default_kernels``: for the tests that set the process-wide default
  (``dsnt_core.kernels.set_default_kernels``): put back afterwards.
* every test must leave the kernel choice (its thread's and the default) as it found it: checked
  after each test, and put back.

On a GPU machine, ``-k "torch-cuda or jax-gpu or cupy"`` runs the GPU entries alone
(``benchmarks/gpu_check.sh`` does, docs/gpu.md).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from _support import (
    BACKEND_NAMES,
    GPU_BACKENDS,
    KERNEL_NAMES,
    LIBRARIES,
    kernels_skip_reason,
    library_of,
    make_backend,
    run_in_thread,
)
from hypothesis import HealthCheck, settings

import dsnt_core
from dsnt_core.kernels import current_kernels, get_kernels, registry, set_default_kernels

try:  # float64 everywhere in the tests; the float32-only path of JAX is tested in a subprocess
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:
    pass

# The backend fixture is a stateless description, so reusing it across examples is safe.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("default", max_examples=12, deadline=None, suppress_health_check=SUPPRESSED)
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=SUPPRESSED, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"backends(*names, gpu=True): run the test's `backend` fixture on these libraries only, of {LIBRARIES}, "
        f"each on every device (or on these entries, of {BACKEND_NAMES}); gpu=False leaves out {tuple(GPU_BACKENDS)}",
    )
    config.addinivalue_line(
        "markers", f"kernels(*names): run the test under each of these kernel implementations, of {KERNEL_NAMES}"
    )


def _marker_choice(metafunc: pytest.Metafunc, marker: str, every: tuple[str, ...]) -> tuple[str, ...]:
    """The names a ``backends``/``kernels`` marker picks (every name without the marker), validated."""
    found = metafunc.definition.get_closest_marker(marker)
    if found is None:
        return every
    unknown = [name for name in found.args if name not in every]
    if unknown or not found.args:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.{marker} takes names of {every}")
    return tuple(found.args)


def _backend_choice(metafunc: pytest.Metafunc) -> tuple[str, ...]:
    """The entries of the ``backend`` fixture a ``backends`` marker picks (every entry without one), validated.

    A library's name picks each of its entries (the GPU one too), an entry's own name that
    entry; ``gpu=False`` leaves out the GPU entries.
    """
    found = metafunc.definition.get_closest_marker("backends")
    if found is None:
        return BACKEND_NAMES
    unknown = [name for name in found.args if name not in LIBRARIES and name not in BACKEND_NAMES]
    options = set(found.kwargs) - {"gpu"}
    if unknown or not found.args or options:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: @pytest.mark.backends takes names of {LIBRARIES} or {BACKEND_NAMES}, "
            "and gpu=False"
        )
    chosen = [
        entry
        for entry in BACKEND_NAMES
        if entry in found.args or (entry not in LIBRARIES and library_of(entry) in found.args)
    ]
    if not found.kwargs.get("gpu", True):
        chosen = [entry for entry in chosen if entry not in GPU_BACKENDS]
    if not chosen:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: @pytest.mark.backends{found.args} picks no entry")
    return tuple(chosen)


def _served_libraries(name: str) -> tuple[str, ...] | None:
    """The libraries the kernel implementation ``name`` serves (empty: all), ``None`` if it cannot be loaded."""
    try:
        return tuple(get_kernels(name).libraries)
    except Exception:  # its framework is missing: the kernels fixture skips it with the reason
        return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wants_backend, wants_kernels = "backend" in metafunc.fixturenames, "kernels" in metafunc.fixturenames
    backends = _backend_choice(metafunc) if wants_backend else ()
    kernel_names = _marker_choice(metafunc, "kernels", KERNEL_NAMES) if wants_kernels else ()
    if wants_backend and wants_kernels:  # each implementation with the backends it serves only
        pairs = []
        for name in kernel_names:
            served = _served_libraries(name)
            if served is None:  # one parameter, to be skipped with the reason
                pairs.append(pytest.param(backends[0], name, id=f"{backends[0]}-{name}"))
                continue
            for entry in backends:
                if not served or library_of(entry) in served:
                    pairs.append(pytest.param(entry, name, id=f"{entry}-{name}"))
        metafunc.parametrize(("backend", "kernels"), pairs, indirect=True)
    elif wants_backend:
        metafunc.parametrize("backend", backends, indirect=True)
    elif wants_kernels:
        metafunc.parametrize("kernels", kernel_names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest):
    """One array library on a device (a `_support.Backend`); skipped with the reason where it cannot run."""
    chosen = make_backend(request.param)
    with chosen.context():
        yield chosen


@pytest.fixture
def kernels(request: pytest.FixtureRequest):
    """The test runs inside ``with dsnt_core.use_kernels(name):``; the fixture gives the implementation."""
    reason = kernels_skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    chosen = request.getfixturevalue("backend") if "backend" in request.fixturenames else None
    with dsnt_core.use_kernels(request.param):
        implementation = get_kernels(request.param)
        if chosen is not None and chosen.gpu and not implementation.applies_to(chosen.asarray(np.zeros((1, 2, 2)))):
            pytest.skip(f"kernels {request.param!r} do not take arrays of {chosen.entry} (on {chosen.device})")
        yield implementation


@pytest.fixture
def default_kernels():
    """For tests that set the process-wide default (``set_default_kernels``): put back afterwards."""
    before = run_in_thread(current_kernels)  # a new thread follows the default
    yield before
    set_default_kernels(before)


@pytest.fixture(autouse=True)
def _kernel_choice_is_left_as_found():
    """A test that changes the kernel choice for good (its thread's or the default) fails, and it is put back.

    Plain ``use_kernels(name)`` calls belong in a thread of their own (``_support.run_in_thread``),
    changes of the default under the ``default_kernels`` fixture.
    """
    before = current_kernels(), run_in_thread(current_kernels)
    yield
    after = current_kernels(), run_in_thread(current_kernels)
    if after != before:
        set_default_kernels(before[1])
        registry._thread_choice.__dict__.clear()  # no public call forgets a thread's own choice
        pytest.fail(f"the test left the kernel choice (this thread's, the default) at {after}, not {before}")
