"""dsnt-core: differentiable spatial to numerical transform, written once for every array library.

Call any function with NumPy, PyTorch, JAX, CuPy, Dask or array-api-strict arrays and get
the same kind of array back, on the same device. The spatial axes are the last ``ndim``
(1, 2 or 3) axes; coordinates come in (x, y[, z]) order, normalised so that pixel centres
lie strictly inside (-1, 1).
"""

from .expectation import dsnt, heatmap_variance
from .fused import dsnt_loss, dsnt_loss_value_and_grad, soft_argmax, soft_argmax_vjp
from .gaussian import gaussian_heatmaps
from .grids import normalized_linspace, normalized_to_pixel, pixel_to_normalized
from .losses import average_loss, euclidean_loss, js_regularizer, kl_regularizer, variance_regularizer
from .normalization import flat_softmax, normalize_heatmaps

__version__ = "0.1.0"

__all__ = [
    "average_loss",
    "dsnt",
    "dsnt_loss",
    "dsnt_loss_value_and_grad",
    "euclidean_loss",
    "flat_softmax",
    "gaussian_heatmaps",
    "heatmap_variance",
    "js_regularizer",
    "kl_regularizer",
    "normalize_heatmaps",
    "normalized_linspace",
    "normalized_to_pixel",
    "pixel_to_normalized",
    "soft_argmax",
    "soft_argmax_vjp",
    "variance_regularizer",
]
