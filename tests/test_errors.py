"""Bad input gets a TypeError or ValueError that names the argument, the expectation and the value."""

from __future__ import annotations

import numpy as np
import pytest

import dsnt_core

Z = np.zeros((2, 3, 4, 5))
T = np.zeros((2, 3, 2))
HM = np.full((2, 3, 4, 5), 1 / 20)

BAD_CALLS = [
    # (id, call, exception, pattern in the message)
    (
        "int logits",
        lambda: dsnt_core.soft_argmax(np.zeros((2, 4, 4), dtype=np.int64)),
        TypeError,
        r"logits must have a real floating dtype.*got int64",
    ),
    (
        "bool heatmaps",
        lambda: dsnt_core.dsnt(np.ones((4, 4), dtype=bool)),
        TypeError,
        r"heatmaps must have a real floating dtype.*got bool",
    ),
    (
        "complex logits",
        lambda: dsnt_core.flat_softmax(np.zeros((4, 4), dtype=complex)),
        TypeError,
        r"logits must have a real floating dtype.*complex128",
    ),
    (
        "int target",
        lambda: dsnt_core.dsnt_loss(Z, T.astype(np.int32)),
        TypeError,
        r"target must have a real floating dtype.*int32",
    ),
    (
        "int means",
        lambda: dsnt_core.gaussian_heatmaps(np.zeros(2, dtype=int), (4, 4), 1.0),
        TypeError,
        r"means must have a real floating dtype",
    ),
    (
        "list logits",
        lambda: dsnt_core.soft_argmax([[0.0, 1.0], [2.0, 3.0]]),
        TypeError,
        r"logits must be an array.*got list",
    ),
    ("scalar heatmaps", lambda: dsnt_core.dsnt(1.0), TypeError, r"heatmaps must be an array.*got float"),
    ("list target", lambda: dsnt_core.dsnt_loss(Z, [[0.0, 0.0]]), TypeError, r"target must be an array.*list"),
    ("list pred", lambda: dsnt_core.euclidean_loss([0.0, 1.0], T), TypeError, r"pred must be an array"),
    (
        "too few axes",
        lambda: dsnt_core.soft_argmax(np.zeros(5)),
        ValueError,
        r"logits must have at least ndim=2 axes \(\.\.\., H, W\), got shape \(5,\)",
    ),
    (
        "too few axes 3-D",
        lambda: dsnt_core.dsnt(np.zeros((4, 4)), ndim=3),
        ValueError,
        r"heatmaps must have at least ndim=3 axes \(\.\.\., D, H, W\), got shape \(4, 4\)",
    ),
    ("ndim 0", lambda: dsnt_core.soft_argmax(Z, ndim=0), ValueError, r"ndim must be 1, 2 or 3, got 0"),
    (
        "ndim 4 fused",
        lambda: dsnt_core.soft_argmax(np.zeros((2, 2, 3, 4, 5)), ndim=4),
        ValueError,
        r"ndim must be 1, 2 or 3, got 4: the fused soft_argmax and dsnt_loss take at most 3 spatial axes",
    ),
    ("ndim 0 composed", lambda: dsnt_core.dsnt(Z, ndim=0), ValueError, r"ndim must be a positive int.*got 0"),
    ("ndim float", lambda: dsnt_core.flat_softmax(Z, ndim=2.0), TypeError, r"ndim must be an int.*float"),
    ("ndim bool", lambda: dsnt_core.heatmap_variance(HM, ndim=True), TypeError, r"ndim must be an int.*bool"),
    (
        "empty spatial axis",
        lambda: dsnt_core.soft_argmax(np.zeros((2, 0, 4))),
        ValueError,
        r"logits must have non-empty spatial axes, got shape \(2, 0, 4\)",
    ),
    (
        "target shape",
        lambda: dsnt_core.dsnt_loss(Z, np.zeros((2, 3, 3))),
        ValueError,
        r"target must have shape \(2, 3, 2\) to match logits of shape \(2, 3, 4, 5\).*got \(2, 3, 3\)",
    ),
    (
        "target leading shape",
        lambda: dsnt_core.dsnt_loss(Z, np.zeros((3, 2, 2))),
        ValueError,
        r"target must have shape \(2, 3, 2\)",
    ),
    (
        "regularizer target shape",
        lambda: dsnt_core.js_regularizer(HM, np.zeros((2, 2, 2)), 1.0),
        ValueError,
        r"target must have shape \(2, 3, 2\) to match heatmaps",
    ),
    (
        "target ndim 4",
        lambda: dsnt_core.kl_regularizer(HM, np.zeros((2, 3, 4)), 1.0),
        ValueError,
        r"target must have shape \(4,\) to match heatmaps of shape \(2, 3, 4, 5\) with ndim=4, got \(2, 3, 4\)",
    ),
    (
        "mask shape",
        lambda: dsnt_core.dsnt_loss(Z, T, mask=np.ones((2, 2))),
        ValueError,
        r"mask must have shape \(2, 3\), got \(2, 2\)",
    ),
    (
        "mask dtype",
        lambda: dsnt_core.dsnt_loss(Z, T, mask=np.ones((2, 3), dtype=complex)),
        TypeError,
        r"mask must have a bool, integer or real floating dtype, got complex128",
    ),
    (
        "average mask shape",
        lambda: dsnt_core.average_loss(np.ones((2, 3)), mask=np.ones(3)),
        ValueError,
        r"mask must have shape \(2, 3\), got \(3,\)",
    ),
    (
        "pred target shapes",
        lambda: dsnt_core.euclidean_loss(np.zeros((2, 2)), np.zeros((3, 2))),
        ValueError,
        r"pred and target must have the same shape, got \(2, 2\) and \(3, 2\)",
    ),
    (
        "sigma zero",
        lambda: dsnt_core.dsnt_loss(Z, T, sigma=0.0),
        ValueError,
        r"sigma must be positive and finite, got 0.0",
    ),
    (
        "sigma negative",
        lambda: dsnt_core.gaussian_heatmaps(T, (4, 5), -1.0),
        ValueError,
        r"sigma must be positive and finite, got -1.0",
    ),
    (
        "sigma inf",
        lambda: dsnt_core.js_regularizer(HM, T, float("inf")),
        ValueError,
        r"sigma must be positive and finite, got inf",
    ),
    (
        "sigma nan",
        lambda: dsnt_core.variance_regularizer(HM, float("nan")),
        ValueError,
        r"sigma must be positive and finite, got nan",
    ),
    (
        "sigma str",
        lambda: dsnt_core.kl_regularizer(HM, T, "1.0"),
        TypeError,
        r"sigma must be a positive Python number or a real floating array broadcastable to \(2, 3, 2\), got str",
    ),
    (
        "sigma int array",
        lambda: dsnt_core.kl_regularizer(HM, T, np.ones(2, dtype=np.int64)),
        TypeError,
        r"sigma must be a positive Python number or a real floating array, got dtype int64",
    ),
    (
        "sigma array shape",
        lambda: dsnt_core.js_regularizer(HM, T, np.ones((3, 3))),
        ValueError,
        r"sigma must be .* an array broadcastable to \(2, 3, 2\).*got shape \(3, 3\)",
    ),
    (
        "temperature zero",
        lambda: dsnt_core.soft_argmax(Z, temperature=0),
        ValueError,
        r"temperature must be positive and finite, got 0",
    ),
    (
        "temperature negative",
        lambda: dsnt_core.flat_softmax(Z, temperature=-2.0),
        ValueError,
        r"temperature must be positive and finite, got -2.0",
    ),
    (
        "temperature nan",
        lambda: dsnt_core.dsnt_loss(Z, T, temperature=float("nan")),
        ValueError,
        r"temperature must be positive and finite, got nan",
    ),
    (
        "reg_weight negative",
        lambda: dsnt_core.dsnt_loss(Z, T, reg_weight=-1.0),
        ValueError,
        r"reg_weight must be non-negative and finite, got -1.0",
    ),
    (
        "unknown method",
        lambda: dsnt_core.normalize_heatmaps(Z, method="softplus"),
        ValueError,
        r"method must be one of \['softmax', 'abs', 'relu', 'sigmoid'\], got 'softplus'",
    ),
    (
        "unknown regularizer",
        lambda: dsnt_core.dsnt_loss(Z, T, regularizer="l2"),
        ValueError,
        r"regularizer must be one of \['js', 'kl', 'var', None\], got 'l2'",
    ),
    (
        "size mismatch",
        lambda: dsnt_core.gaussian_heatmaps(np.zeros((3, 2)), (4, 4, 4), 1.0),
        ValueError,
        r"size must have 2 entries to match the last axis of the coordinates, got \(4, 4, 4\)",
    ),
    (
        "size zero",
        lambda: dsnt_core.gaussian_heatmaps(np.zeros(2), (0, 4), 1.0),
        ValueError,
        r"size must hold one or more positive ints, got \(0, 4\)",
    ),
    (
        "size type",
        lambda: dsnt_core.pixel_to_normalized(np.zeros(2), "44"),
        TypeError,
        r"size must be a sequence of ints",
    ),
    (
        "conversion size",
        lambda: dsnt_core.normalized_to_pixel(np.zeros((5, 3)), (4, 4)),
        ValueError,
        r"size must have 3 entries",
    ),
    (
        "cotangent shape",
        lambda: dsnt_core.soft_argmax_vjp(Z, np.zeros((2, 3, 3))),
        ValueError,
        r"cotangent must have shape \(2, 3, 2\) to match logits",
    ),
    ("linspace n", lambda: dsnt_core.normalized_linspace(0), ValueError, r"n must be at least 1, got 0"),
    ("linspace float", lambda: dsnt_core.normalized_linspace(4.0), TypeError, r"n must be an int\b.*, got float"),
]


@pytest.mark.parametrize(("call", "exception", "pattern"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_named_in_a_clear_error(call, exception, pattern):
    with pytest.raises(exception, match=pattern):
        call()


@pytest.mark.backends("torch")
def test_arrays_of_two_libraries_are_refused(backend):
    with pytest.raises(TypeError, match=r"same library, got logits is torch, target is numpy"):
        dsnt_core.dsnt_loss(backend.asarray(Z), T)
    with pytest.raises(TypeError, match=r"same library, got pred is numpy, target is torch"):
        dsnt_core.euclidean_loss(T, backend.asarray(T))
    with pytest.raises(TypeError, match=r"same library, got logits is numpy, target is numpy, mask is torch"):
        dsnt_core.dsnt_loss(Z, T, mask=backend.asarray(np.ones((2, 3))))


@pytest.mark.backends("jax")
def test_jax_and_numpy_mixed_are_refused_under_jit(backend):
    def loss(z):
        return dsnt_core.dsnt_loss(z, T)

    with pytest.raises(TypeError, match=r"same library, got logits is jax, target is numpy"):
        backend.jit(loss)(backend.asarray(Z))


def test_integer_and_boolean_masks_are_accepted(backend):
    rng = np.random.default_rng(0)
    z, t = backend.asarray(rng.normal(size=Z.shape)), backend.asarray(rng.uniform(-0.5, 0.5, size=T.shape))
    loss_float = dsnt_core.dsnt_loss(z, t, mask=backend.asarray([[1.0, 0.0, 1.0]] * 2))
    loss_bool = dsnt_core.dsnt_loss(z, t, mask=backend.asarray([[True, False, True]] * 2))
    loss_int = dsnt_core.dsnt_loss(z, t, mask=backend.asarray([[1, 0, 1]] * 2, "int64"))
    backend.assert_close(loss_bool, loss_float, like=z)
    backend.assert_close(loss_int, loss_float, like=z)
