"""The fused training path: ``soft_argmax`` and ``dsnt_loss`` with their gradient entry points.

Torch tensors and JAX arrays are handed to their adapters, which register the gradient rules
of :mod:`dsnt_core._fused_rules` with the framework's autodiff. Other libraries get the
forward pass here and the explicit ``*_vjp`` / ``*_value_and_grad`` functions for training.
"""

from __future__ import annotations

import array_api_compat

from . import _numpy_kernels
from ._adapters import adapter_for
from ._array_utils import Array, Namespace, namespace_of, to_dtype
from ._fused_rules import (
    LossOptions,
    dsnt_loss_backward,
    dsnt_loss_forward,
    soft_argmax_backward,
    soft_argmax_forward,
)
from ._validation import (
    REGULARIZERS,
    check_choice,
    check_coordinates,
    check_mask,
    check_ndim,
    check_nonnegative_finite,
    check_positive_finite,
    check_spatial,
)


def _check_soft_argmax(logits: Array, ndim: int, temperature: float) -> tuple[Namespace, int, float]:
    xp = namespace_of(logits=logits)
    ndim = check_ndim(ndim)
    check_spatial(xp, logits, "logits", ndim)
    return xp, ndim, check_positive_finite(temperature, "temperature")


def _soft_argmax_forward(xp: Namespace, logits: Array, ndim: int, temperature: float) -> tuple[Array, dict]:
    """The forward rule, through the NumPy fast path for NumPy arrays."""
    if array_api_compat.is_numpy_array(logits):
        return _numpy_kernels.soft_argmax_forward(xp, logits, ndim, temperature)
    return soft_argmax_forward(xp, logits, ndim, temperature)


def soft_argmax(logits: Array, /, *, ndim: int = 2, temperature: float = 1.0) -> Array:
    """Expected coordinates of ``softmax(logits / temperature)``: ``dsnt(flat_softmax(logits))``.

    Fused: no normalised heatmap is kept for the backward pass. Differentiable in PyTorch
    and JAX (through their adapters); for other libraries see `soft_argmax_vjp`.

    Parameters
    ----------
    logits : array of shape (..., *spatial)
        Unnormalised heatmaps; the last ``ndim`` axes are spatial.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.

    Returns
    -------
    array of shape (..., ndim)
        Normalised pixel-centre coordinates in (x, y[, z]) order, same library, device and
        dtype as ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> logits = np.full((1, 3, 3), -1e4)
    >>> logits[0, 2, 0] = 0.0  # bottom-left pixel
    >>> dsnt_core.soft_argmax(logits).round(6).tolist()
    [[-0.666667, 0.666667]]
    """
    xp, ndim, temperature = _check_soft_argmax(logits, ndim, temperature)
    adapter = adapter_for(logits)
    if adapter is not None:
        return adapter.soft_argmax(logits, ndim=ndim, temperature=temperature)
    coords, _ = _soft_argmax_forward(xp, logits, ndim, temperature)
    return coords


def soft_argmax_vjp(logits: Array, cotangent: Array, /, *, ndim: int = 2, temperature: float = 1.0) -> Array:
    """Gradient of ``sum(cotangent * soft_argmax(logits))`` with respect to ``logits``.

    For libraries without autodiff (NumPy, CuPy, array-api-strict, Dask).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
    cotangent : array of shape (..., ndim)
        Gradient of the objective with respect to the coordinates.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.

    Returns
    -------
    array of the same shape and dtype as ``logits``; each heatmap's gradient sums to 0.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> grad = dsnt_core.soft_argmax_vjp(np.zeros((1, 4, 4)), np.asarray([[1.0, 0.0]]))
    >>> abs(float(grad.sum())) < 1e-12, float(grad[0, 0, 3]) > 0
    (True, True)
    """
    xp, ndim, temperature = _check_soft_argmax(logits, ndim, temperature)
    namespace_of(logits=logits, cotangent=cotangent)
    check_coordinates(xp, cotangent, "cotangent", logits, ndim, "logits")
    _, residuals = _soft_argmax_forward(xp, logits, ndim, temperature)
    return soft_argmax_backward(xp, logits, residuals, cotangent, ndim, temperature)


def _check_loss(
    logits: Array,
    target: Array,
    mask: Array | None,
    *,
    sigma: float,
    regularizer: str | None,
    reg_weight: float,
    ndim: int,
    temperature: float,
) -> tuple[Namespace, LossOptions]:
    xp = namespace_of(logits=logits, target=target, mask=mask)
    ndim = check_ndim(ndim)
    check_spatial(xp, logits, "logits", ndim)
    check_coordinates(xp, target, "target", logits, ndim, "logits")
    check_mask(xp, mask, tuple(target.shape[:-1]))
    options = LossOptions(
        ndim=ndim,
        temperature=check_positive_finite(temperature, "temperature"),
        sigma=check_positive_finite(sigma, "sigma"),
        regularizer=check_choice(regularizer, "regularizer", REGULARIZERS),
        reg_weight=check_nonnegative_finite(reg_weight, "reg_weight"),
    )
    return xp, options


def dsnt_loss(
    logits: Array,
    target: Array,
    /,
    *,
    sigma: float = 1.0,
    regularizer: str | None = "js",
    reg_weight: float = 1.0,
    mask: Array | None = None,
    ndim: int = 2,
    temperature: float = 1.0,
) -> Array:
    """The DSNT training loss from logits: mean Euclidean error plus a heatmap regulariser.

    ``average(euclidean_loss(soft_argmax(logits), target) + reg_weight * reg, mask)``, with
    the regulariser one of `js_regularizer`, `kl_regularizer` (against a Gaussian of
    ``sigma`` pixels at the target) or `variance_regularizer`. Fused: nothing of heatmap
    size is kept for the backward pass except the logits. The target gets no gradient in
    the fused path (PyTorch falls back to the composed form when it requires one).

    Parameters
    ----------
    logits : array of shape (..., *spatial)
    target : array of shape (..., ndim)
        Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
    sigma : float
        Target standard deviation of the heatmaps, in pixels.
    regularizer : {"js", "kl", "var", None}
        Which regulariser to add (JS worked best in the paper).
    reg_weight : float
        Its weight (the paper's lambda).
    mask : array of shape (...), optional
        Boolean or float weights of the points; masked-out points contribute nothing.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.

    Returns
    -------
    0-d array in the logits' dtype

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(size=(2, 3, 16, 16))
    >>> target = rng.uniform(-0.8, 0.8, size=(2, 3, 2))
    >>> float(dsnt_core.dsnt_loss(logits, target, sigma=1.0)) > 0
    True
    """
    kwargs = dict(sigma=sigma, regularizer=regularizer, reg_weight=reg_weight, ndim=ndim, temperature=temperature)
    xp, options = _check_loss(logits, target, mask, **kwargs)
    adapter = adapter_for(logits)
    if adapter is not None:
        return adapter.dsnt_loss(logits, target, mask, options)
    loss, _ = dsnt_loss_forward(xp, logits, target, mask, options)
    return to_dtype(xp, loss, logits.dtype)


def dsnt_loss_value_and_grad(
    logits: Array,
    target: Array,
    /,
    *,
    sigma: float = 1.0,
    regularizer: str | None = "js",
    reg_weight: float = 1.0,
    mask: Array | None = None,
    ndim: int = 2,
    temperature: float = 1.0,
) -> tuple[Array, Array]:
    """`dsnt_loss` and its gradient with respect to the logits, for libraries without autodiff.

    Parameters are those of `dsnt_loss`.

    Returns
    -------
    loss : 0-d array in the logits' dtype
    grad : array of the logits' shape and dtype

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> logits = np.zeros((1, 1, 8, 8))
    >>> loss, grad = dsnt_core.dsnt_loss_value_and_grad(logits, np.asarray([[[0.5, 0.0]]]))
    >>> grad.shape, abs(float(grad.sum())) < 1e-12
    ((1, 1, 8, 8), True)
    """
    kwargs = dict(sigma=sigma, regularizer=regularizer, reg_weight=reg_weight, ndim=ndim, temperature=temperature)
    xp, options = _check_loss(logits, target, mask, **kwargs)
    loss, residuals = dsnt_loss_forward(xp, logits, target, mask, options)
    grad = dsnt_loss_backward(xp, logits, target, mask, residuals, xp.ones_like(loss), options)
    return to_dtype(xp, loss, logits.dtype), grad
