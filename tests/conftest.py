"""Shared fixtures: the cross-backend ``backend`` fixture and hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from _support import BACKEND_NAMES, make_backend
from hypothesis import HealthCheck, settings

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


@pytest.fixture(params=BACKEND_NAMES)
def backend(request):
    """Every array library: numpy, array_api_strict, torch, jax, cupy (skipped with a reason)."""
    return make_backend(request.param)
