"""``torch.nn.Module`` conveniences: a DSNT head and the DSNT loss.

Both deploy through ``torch.export`` (and the ONNX exporters), ``torch.jit.trace`` and
``torch.compile``. For ``torch.fx.symbolic_trace`` the core's functions are leaf functions
(``torch.fx.wrap``): a traced graph calls them as single nodes, since the core cannot run on
fx Proxies, which have no shape or dtype. TorchScript (``torch.jit.script``) cannot compile
the core, which is Python written against the array API: scripting either module raises a
``RuntimeError`` that names the supported routes.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import torch

from dsnt_core import dsnt_loss, flat_softmax, heatmap_confidence, soft_argmax
from dsnt_core._validation import CONFIDENCE_METHODS, DISTANCES, UNITS, check_choice, check_positive_finite

# Leaf functions for torch.fx.symbolic_trace: each call becomes one call_function node.
torch.fx.wrap("soft_argmax")
torch.fx.wrap("flat_softmax")
torch.fx.wrap("dsnt_loss")
torch.fx.wrap("heatmap_confidence")


def _not_scriptable(module: torch.nn.Module) -> NoReturn:
    """Refuse ``torch.jit.script`` with the routes that work instead."""
    raise RuntimeError(
        f"{type(module).__name__} cannot be compiled by TorchScript (torch.jit.script): dsnt_core is Python "
        "code written against the array API, which TorchScript cannot compile. Use torch.export.export "
        "(the supported successor of TorchScript; also the route of torch.onnx.export(..., dynamo=True)), "
        "or torch.jit.trace, which records the operations and follows the input's size. "
        "See the deployment page of the documentation."
    )


class DSNTHead(torch.nn.Module):
    """Turn features or logits into coordinates (and optionally the heatmaps).

    Parameters
    ----------
    in_channels : int, optional
        When given with ``num_points``, a 1x1 convolution first maps features of
        ``in_channels`` channels to one logit map per point (as in the DSNT paper).
    num_points : int, optional
        Number of points (output channels of the 1x1 convolution).
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature (the initial value when ``learn_temperature``).
    learn_temperature : bool
        Make the temperature a parameter, ``exp(log_temperature)`` (positive by construction),
        one per point when ``num_points`` is given, else one for all; trained through the
        fused rules' temperature gradient.
    return_heatmaps : bool
        Also return the normalised heatmaps (computed only when asked for).
    units : {"normalized", "pixels"}
        Coordinates normalised to (-1, 1) (pixel centres), or in pixels (pixel ``j`` at ``j``,
        kornia's ``normalized_coordinates=False``), converted from the float32-or-wider
        moments before rounding to the logits' dtype: exact at pixel centres in bfloat16 too.
    return_confidence : bool
        Also return one confidence score per point, `dsnt_core.heatmap_confidence` of the
        heatmaps (see there how to threshold it for visibility).
    confidence : {"peak", "spread", "entropy"}
        Which score ``return_confidence`` gives.

    Raises
    ------
    ValueError
        If ``in_channels`` and ``num_points`` are not given together, ``ndim`` is not 1, 2 or 3,
        or ``units`` or ``confidence`` is not one of its choices.

    Notes
    -----
    ``torch.jit.script`` raises a ``RuntimeError`` naming the supported routes
    (``torch.export``, ``torch.jit.trace``); ``torch.fx.symbolic_trace`` keeps the core's
    functions as leaf calls.

    Examples
    --------
    >>> import torch
    >>> from dsnt_torch import DSNTHead
    >>> head = DSNTHead(in_channels=8, num_points=3)
    >>> head(torch.randn(2, 8, 16, 16)).shape
    torch.Size([2, 3, 2])
    >>> head = DSNTHead(in_channels=8, num_points=3, units="pixels", return_confidence=True, confidence="spread")
    >>> coords, scores = head(torch.randn(2, 8, 16, 16))
    >>> coords.shape, scores.shape
    (torch.Size([2, 3, 2]), torch.Size([2, 3]))
    >>> head = DSNTHead(in_channels=8, num_points=3, learn_temperature=True)
    >>> head.log_temperature.shape
    torch.Size([3])
    """

    def __init__(
        self,
        in_channels: int | None = None,
        num_points: int | None = None,
        *,
        ndim: int = 2,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        return_heatmaps: bool = False,
        units: str = "normalized",
        return_confidence: bool = False,
        confidence: str = "peak",
    ) -> None:
        super().__init__()
        check_positive_finite(temperature, "temperature")
        check_choice(units, "units", UNITS)
        check_choice(confidence, "confidence", CONFIDENCE_METHODS)
        if (in_channels is None) != (num_points is None):
            raise ValueError(f"in_channels and num_points must be given together, got {in_channels} and {num_points}")
        conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}.get(ndim)
        if conv is None:
            raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
        self.to_logits: torch.nn.Module | None = None
        if in_channels is not None and num_points is not None:
            self.to_logits = conv(in_channels, num_points, 1)
        self.ndim, self.temperature, self.return_heatmaps = ndim, temperature, return_heatmaps
        self.units, self.return_confidence, self.confidence = units, return_confidence, confidence
        self.log_temperature: torch.nn.Parameter | None = None
        if learn_temperature:
            initial = torch.full((num_points,) if num_points is not None else (), math.log(temperature))
            self.log_temperature = torch.nn.Parameter(initial)

    def current_temperature(self) -> float | torch.Tensor:
        """The softmax temperature: the number given, or ``exp(log_temperature)`` when learnt.

        Returns
        -------
        float or torch.Tensor
            The temperature the next forward pass uses.
        """
        return self.temperature if self.log_temperature is None else torch.exp(self.log_temperature)

    def __prepare_scriptable__(self) -> NoReturn:
        """Called by ``torch.jit.script``: raises, naming the routes that deploy this module.

        Raises
        ------
        RuntimeError
            Always: TorchScript cannot compile the core.
        """
        _not_scriptable(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The coordinates of ``x`` (and its heatmaps, its confidence scores, when asked for).

        Parameters
        ----------
        x : torch.Tensor
            Features of shape (batch, in_channels, *spatial) when the head has a convolution,
            else logits of shape (..., *spatial).

        Returns
        -------
        coords : torch.Tensor of shape (..., ndim)
            Coordinates in (x, y[, z]) order, one per logit map, normalised or in pixels (``units``).
        heatmaps : torch.Tensor
            The normalised heatmaps, of the logits' shape; only with ``return_heatmaps``.
        confidence : torch.Tensor of shape (...)
            One score per logit map in [0, 1]; only with ``return_confidence``.
        """
        logits = self.to_logits(x) if self.to_logits is not None else x
        temperature = self.current_temperature()
        coords = soft_argmax(logits, ndim=self.ndim, temperature=temperature, units=self.units)
        if not (self.return_heatmaps or self.return_confidence):
            return coords
        heatmaps = flat_softmax(logits, ndim=self.ndim, temperature=temperature)
        outputs = [coords, heatmaps] if self.return_heatmaps else [coords]
        if self.return_confidence:
            outputs.append(heatmap_confidence(heatmaps, ndim=self.ndim, method=self.confidence))
        return tuple(outputs)


class DSNTLoss(torch.nn.Module):
    """The DSNT loss from logits, `dsnt_core.dsnt_loss`, as a module.

    Parameters
    ----------
    sigma : float
        Target standard deviation of the heatmaps, in pixels.
    regularizer : {"js", "kl", "var", None}
        Which regulariser to add.
    reg_weight : float
        Its weight.
    ndim : int
        Number of spatial axes (1, 2 or 3).
    temperature : float
        Softmax temperature.
    distance : {"euclidean", "l1", "mse"}
        The per-point coordinate loss (dsntnn's definitions).

    Notes
    -----
    ``torch.jit.script`` raises a ``RuntimeError`` naming the supported routes
    (``torch.export``, ``torch.jit.trace``); ``torch.fx.symbolic_trace`` keeps the loss as
    one leaf call.

    Examples
    --------
    >>> import torch
    >>> from dsnt_torch import DSNTLoss
    >>> loss = DSNTLoss(sigma=1.0, regularizer="js")
    >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    >>> loss(logits, torch.zeros(2, 3, 2)).backward()
    >>> logits.grad.shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        *,
        sigma: float = 1.0,
        regularizer: str | None = "js",
        reg_weight: float = 1.0,
        ndim: int = 2,
        temperature: float = 1.0,
        distance: str = "euclidean",
    ) -> None:
        super().__init__()
        self.options: dict[str, Any] = dict(
            sigma=sigma,
            regularizer=regularizer,
            reg_weight=reg_weight,
            ndim=ndim,
            temperature=temperature,
            distance=check_choice(distance, "distance", DISTANCES),
        )

    def __prepare_scriptable__(self) -> NoReturn:
        """Called by ``torch.jit.script``: raises, naming the routes that deploy this module.

        Raises
        ------
        RuntimeError
            Always: TorchScript cannot compile the core.
        """
        _not_scriptable(self)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``logits`` against ``target``.

        Parameters
        ----------
        logits : torch.Tensor of shape (..., *spatial)
            Unnormalised heatmaps, one per point; the last ``ndim`` axes are spatial.
        target : torch.Tensor of shape (..., ndim)
            Target coordinates, normalised pixel-centre convention, (x, y[, z]) order.
        mask : torch.Tensor of shape (...), optional
            Boolean or float weights of the points.

        Returns
        -------
        torch.Tensor
            The 0-d loss, in the logits' dtype.
        """
        return dsnt_loss(logits, target, mask=mask, **self.options)
