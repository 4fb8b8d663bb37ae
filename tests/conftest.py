"""Shared fixtures: the cross-backend ``backend`` fixture, the ``kernels`` fixture, their markers
and the hypothesis profiles.

* ``backend``: every array library of ``_support.BACKEND_NAMES`` (numpy, array_api_strict, torch,
  jax, cupy), each skipped with its reason where it cannot run. ``@pytest.mark.backends("torch",
  "jax")`` on a test (or ``pytestmark`` of a module) narrows it to those libraries.
* ``kernels``: runs the test inside ``with dsnt_core.use_kernels(name):`` and gives the
  implementation; every implementation by default, ``@pytest.mark.kernels("torch-native")`` to
  choose. Skipped with the reason where the implementation cannot run. A test that takes both
  fixtures gets each implementation with the backends it serves only.
* ``default_kernels``: for the tests that set the process-wide default
  (``dsnt_core.kernels.set_default_kernels``): put back afterwards.
* every test must leave the kernel choice (its thread's and the default) as it found it: checked
  after each test, and put back.
"""

from __future__ import annotations

import os

import pytest
from _support import BACKEND_NAMES, KERNEL_NAMES, kernels_skip_reason, make_backend, run_in_thread
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
        "markers", f"backends(*names): run the test's `backend` fixture on these libraries only, of {BACKEND_NAMES}"
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


def _served_libraries(name: str) -> tuple[str, ...] | None:
    """The libraries the kernel implementation ``name`` serves (empty: all), ``None`` if it cannot be loaded."""
    try:
        return tuple(get_kernels(name).libraries)
    except Exception:  # its framework is missing: the kernels fixture skips it with the reason
        return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wants_backend, wants_kernels = "backend" in metafunc.fixturenames, "kernels" in metafunc.fixturenames
    backends = _marker_choice(metafunc, "backends", BACKEND_NAMES) if wants_backend else ()
    kernel_names = _marker_choice(metafunc, "kernels", KERNEL_NAMES) if wants_kernels else ()
    if wants_backend and wants_kernels:  # each implementation with the backends it serves only
        pairs = []
        for name in kernel_names:
            served = _served_libraries(name)
            if served is None:  # one parameter, to be skipped with the reason
                pairs.append(pytest.param(backends[0], name, id=f"{backends[0]}-{name}"))
                continue
            for library in backends:
                if not served or library in served:
                    pairs.append(pytest.param(library, name, id=f"{library}-{name}"))
        metafunc.parametrize(("backend", "kernels"), pairs, indirect=True)
    elif wants_backend:
        metafunc.parametrize("backend", backends, indirect=True)
    elif wants_kernels:
        metafunc.parametrize("kernels", kernel_names, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest):
    """One array library (a `_support.Backend`); skipped with the reason where it cannot run."""
    return make_backend(request.param)


@pytest.fixture
def kernels(request: pytest.FixtureRequest):
    """The test runs inside ``with dsnt_core.use_kernels(name):``; the fixture gives the implementation."""
    reason = kernels_skip_reason(request.param)
    if reason is not None:
        pytest.skip(reason)
    with dsnt_core.use_kernels(request.param):
        yield get_kernels(request.param)


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
