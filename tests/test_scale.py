"""Beyond one array: lazy Dask stacks chunked along the batch, and JAX logits sharded over devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _support import REGULARIZERS, assert_close

import dsnt_core


@pytest.mark.parametrize("regularizer", REGULARIZERS)
def test_dask_stack_larger_than_one_chunk_is_computed_lazily(regularizer):
    da = pytest.importorskip("dask.array", reason="dask is not installed (test extra)")
    rng = np.random.default_rng(4)
    logits_np = rng.normal(size=(12, 5, 16, 16))
    target_np = rng.uniform(-0.8, 0.8, size=(12, 5, 2))
    logits = da.from_array(logits_np, chunks=(4, 5, 16, 16))
    target = da.from_array(target_np, chunks=(4, 5, 2))
    assert logits.numblocks[0] == 3
    coords = dsnt_core.soft_argmax(logits)
    loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, target, regularizer=regularizer)
    per_point = dsnt_core.js_regularizer(dsnt_core.flat_softmax(logits), target, 1.0)
    for lazy in (coords, loss, grad, per_point):
        assert isinstance(lazy, da.Array)
    assert grad.numblocks[0] == 3  # still chunked along the batch
    expected_loss, expected_grad = dsnt_core.dsnt_loss_value_and_grad(logits_np, target_np, regularizer=regularizer)
    expected_per_point = dsnt_core.js_regularizer(dsnt_core.flat_softmax(logits_np), target_np, 1.0)
    # Compared as dask arrays (computed only to read the values): lazy, float64, on the CPU.
    assert_close(coords, dsnt_core.soft_argmax(logits_np), like=logits)
    assert_close(loss, expected_loss, like=logits)
    assert_close(grad, expected_grad, like=logits, atol=1e-14)
    assert_close(per_point, expected_per_point, like=logits)


SHARDED_STEP = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import dsnt_core

    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(16, 17, 32, 32)), dtype=jnp.float32)
    target = jnp.asarray(rng.uniform(-0.8, 0.8, size=(16, 17, 2)), dtype=jnp.float32)
    mesh = Mesh(np.asarray(jax.devices()), ("batch",))
    sharded_logits = jax.device_put(logits, NamedSharding(mesh, P("batch")))
    sharded_target = jax.device_put(target, NamedSharding(mesh, P("batch")))

    step = jax.jit(jax.value_and_grad(lambda z, t: dsnt_core.dsnt_loss(z, t, sigma=1.0)))
    loss, grad = step(sharded_logits, sharded_target)
    ref_loss, ref_grad = step(logits, target)
    assert len(grad.sharding.device_set) == 8, grad.sharding
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5 * float(jnp.abs(ref_grad).max()))
    print("sharded ok", float(loss))
    """
)


@pytest.mark.backends("jax", gpu=False)  # host devices
def test_jax_training_step_sharded_over_8_host_devices_equals_unsharded(backend):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", SHARDED_STEP], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
