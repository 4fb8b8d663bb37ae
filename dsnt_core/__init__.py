"""dsnt-core: differentiable spatial to numerical transform, written once for every array library.

Call any function with NumPy, PyTorch, JAX, CuPy, Dask or array-api-strict arrays and get
the same kind of array back, on the same device. The spatial axes are the last ``ndim``
axes (any number from 1; the fused ``soft_argmax`` and ``dsnt_loss`` take 1, 2 or 3);
coordinates come in (x, y[, z]) order, normalised so that pixel centres lie strictly inside
(-1, 1), or in pixels (``units="pixels"``).

The layers (``docs/architecture.md``): :mod:`dsnt_core.ops` holds one operation per module;
the fused ones (``soft_argmax``, ``dsnt_loss``) run their full-size passes on a kernel
implementation from :mod:`dsnt_core.kernels`, chosen with `use_kernels`; framework adapters
(``dsnt_torch``, ``dsnt_jax``) register the gradient rules through entry points.
"""

from . import _backends
from .kernels import available_kernels, use_kernels
from .ops.confidence import heatmap_confidence
from .ops.dsnt import dsnt, heatmap_variance, linear_expectation
from .ops.dsnt_loss import dsnt_loss, dsnt_loss_value_and_grad
from .ops.gaussian import gaussian_heatmaps
from .ops.grids import normalized_linspace, normalized_to_pixel, pixel_linspace, pixel_to_normalized
from .ops.losses import average_loss, euclidean_loss, l1_loss, mse_loss
from .ops.normalize import flat_softmax, normalize_heatmaps, sharpen_heatmaps
from .ops.regularizers import js_regularizer, kl_regularizer, variance_regularizer
from .ops.soft_argmax import soft_argmax, soft_argmax_vjp

__version__ = "0.1.0"

__all__ = [
    "available_kernels",
    "average_loss",
    "dsnt",
    "dsnt_loss",
    "dsnt_loss_value_and_grad",
    "euclidean_loss",
    "flat_softmax",
    "gaussian_heatmaps",
    "heatmap_confidence",
    "heatmap_variance",
    "js_regularizer",
    "kl_regularizer",
    "l1_loss",
    "linear_expectation",
    "mse_loss",
    "normalize_heatmaps",
    "normalized_linspace",
    "normalized_to_pixel",
    "pixel_linspace",
    "pixel_to_normalized",
    "sharpen_heatmaps",
    "soft_argmax",
    "soft_argmax_vjp",
    "use_kernels",
    "variance_regularizer",
]

_backends.load_adapters_of_imported_libraries()
