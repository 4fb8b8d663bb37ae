"""Which library an array comes from, its namespace and device, and the adapter registered for it.

All backend detection of the core lives here. No framework is imported: a torch tensor can
only exist once ``torch`` has been imported by someone else, so the checks look it up in
``sys.modules``. Framework adapters are found through the ``dsnt_core.adapters`` entry-point
group (``torch = "dsnt_torch.autograd"``, ...), so the core never names them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any, Protocol, cast

import array_api_compat

from ._typing import Array, Device, Namespace

ADAPTER_GROUP = "dsnt_core.adapters"
"""Entry-point group of framework adapters: name = the library (``library_of``), value = a module."""


class Adapter(Protocol):
    """A framework adapter: the fused operations with the core's gradient rules registered.

    Its functions receive validated inputs and the kernel implementation chosen for the call.
    """

    def soft_argmax(self, logits: Array, *, ndim: int, temperature: Any, kernels: Any, units: str = ...) -> Array: ...

    def dsnt_loss(self, logits: Array, target: Array, mask: Array | None, options: Any, *, kernels: Any) -> Array: ...


def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch has been imported, else ``None`` (torch is never imported here)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def is_torch_tensor(x: object) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (subclasses and tracing proxies of it included)."""
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(x, tensor_type)


def is_fx_proxy(x: object) -> bool:
    """Whether ``x`` is a ``torch.fx.Proxy``: what ``torch.fx.symbolic_trace`` hands over for a tensor or a size."""
    fx = sys.modules.get("torch.fx")
    return fx is not None and isinstance(x, fx.Proxy)


def is_symbolic_size(n: object) -> bool:
    """Whether ``n`` is a size that a tracer hands over where a Python ``int`` would be.

    ``True`` for a ``torch.SymInt`` (``torch.export``, ``torch.compile``), a 0-d tensor while
    ``torch.jit.trace`` (or the TorchScript ONNX exporter) records, a ``torch.fx.Proxy``
    (``torch.fx.symbolic_trace``) and a JAX dimension expression (``jax.export`` with
    symbolic shapes). Such a size has no value yet: it may only go into arithmetic and array
    constructors, never into Python comparisons, ``int()`` or ``float()``. Concrete ints
    (and everything else) give ``False``.

    Parameters
    ----------
    n : object
        A size, usually an entry of an array's ``shape``.

    Returns
    -------
    bool
        Whether ``n`` is symbolic.

    Examples
    --------
    >>> from dsnt_core._backends import is_symbolic_size
    >>> is_symbolic_size(4)
    False
    """
    if isinstance(n, int):
        return False
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(n, torch.SymInt):
            return True
        if isinstance(n, torch.Tensor):
            return n.ndim == 0 and bool(torch.jit.is_tracing())
        if is_fx_proxy(n):
            return True
    jax = sys.modules.get("jax")
    export = None if jax is None else sys.modules.get("jax.export")
    return export is not None and bool(export.is_symbolic_dim(n))


def is_traced_number(value: object) -> bool:
    """Whether ``value`` is a traced stand-in for a Python number (a temperature, a weight...).

    ``True`` for symbolic sizes (`is_symbolic_size`), ``torch.SymFloat`` and ``torch.SymInt``
    (``torch.compile(dynamic=True)`` and ``torch.export`` turn Python numbers into them) and a
    0-d JAX tracer (a number passed through ``jax.jit`` as an argument). A traced number has no
    value to check: checks of values let it through and validate concrete numbers only.

    Parameters
    ----------
    value : object
        A number-like argument.

    Returns
    -------
    bool
        Whether ``value`` is traced.

    Examples
    --------
    >>> from dsnt_core._backends import is_traced_number
    >>> is_traced_number(0.5)
    False
    """
    if isinstance(value, (int, float)):
        return False
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, (torch.SymFloat, torch.SymInt)):
        return True
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(value, jax.core.Tracer):
        return getattr(value, "ndim", None) == 0
    return is_symbolic_size(value)


def traced_size_arange(n: Array, *, dtype: Any, device: Device) -> Array:
    """``arange(n)`` for a size tensor of ``torch.jit.trace``, with ``n`` recorded as an input.

    array-api-compat's ``arange`` compares its end with 0 in Python, which reads the size's
    value while tracing (a ``TracerWarning``, and a trace that ignores the input's size);
    ``torch.arange`` itself records the size as the end of the range.
    """
    torch = sys.modules["torch"]
    return cast(Array, torch.arange(n, dtype=dtype, device=device))


def library_of(x: object) -> str:
    """Short name of the array library of ``x``: ``"numpy"``, ``"torch"``, ``"jax"``, ``"cupy"``, ...

    JAX tracers count as ``"jax"``; the name of other libraries is the last part of their
    array-API namespace's module name (``"array_api_strict"``, ``"dask"`` for dask.array).
    """
    if is_torch_tensor(x):
        return "torch"
    if array_api_compat.is_jax_array(x):
        return "jax"
    if array_api_compat.is_dask_array(x):
        return "dask"
    return array_api_compat.array_namespace(x).__name__.rsplit(".", 1)[-1]


def is_array(x: object) -> bool:
    """Whether ``x`` is an array of a library that array-api-compat knows (Python scalars are not)."""
    if is_torch_tensor(x):
        return True
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def namespace_of(**arrays: Array | None) -> Namespace:
    """Array namespace shared by the named arrays (``None`` values are ignored).

    Raises
    ------
    TypeError
        If an argument is not an array (a ``torch.fx.Proxy`` included: the message says how to
        trace around the core), or if the arrays come from different libraries.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    for name, value in given.items():
        if is_fx_proxy(value):
            raise TypeError(
                f"{name} is a torch.fx Proxy: torch.fx.symbolic_trace cannot trace into dsnt_core "
                "(a Proxy has no shape or dtype). Call it as a leaf function: the modules of dsnt_torch "
                "(DSNTHead, DSNTLoss) do so; in your own module, call torch.fx.wrap('soft_argmax') at "
                "module level after `from dsnt_core import soft_argmax`"
            )
        if not is_array(value):
            raise TypeError(
                f"{name} must be an array (NumPy, PyTorch, JAX, CuPy, Dask or any array-API "
                f"array), got {type(value).__name__}"
            )
    libraries = {name: library_of(a) for name, a in given.items()}
    if len(set(libraries.values())) > 1:
        listed = ", ".join(f"{name} is {lib}" for name, lib in libraries.items())
        raise TypeError(
            f"all arrays of one call must come from the same library, got {listed}; "
            "convert them first (e.g. with xp.asarray or DLPack)"
        )
    first = next(iter(given.values()))
    if is_torch_tensor(first):
        # Resolved directly: keeps torch.compile's tracer out of array-api-compat's caches.
        from array_api_compat import torch as torch_namespace

        return torch_namespace
    return array_api_compat.array_namespace(*given.values())


def device_of(x: Array) -> Device:
    """Device of ``x`` as the array API defines it."""
    if is_torch_tensor(x):
        return x.device  # type: ignore[attr-defined]
    return array_api_compat.device(x)


AUTODIFF_LIBRARIES = ("torch", "jax")
"""Libraries whose arrays carry gradients: the only ones an adapter is looked up for."""

_adapters: dict[str, Adapter | None] = {}  # a plain dict: torch.compile traces lookups in it


def _load_adapter(library: str) -> Adapter | None:
    """Load (once) the adapter registered for ``library`` in the ``dsnt_core.adapters`` group."""
    adapter = None
    for entry in entry_points(group=ADAPTER_GROUP):
        if entry.name == library:
            adapter = entry.load()
            break
    _adapters[library] = adapter
    return adapter


def load_adapters_of_imported_libraries() -> None:
    """Load the adapters of the autodiff libraries imported so far (``import dsnt_core`` calls it).

    Loading reads entry points and imports modules, which ``torch.compile`` cannot trace, so
    it is done ahead of time wherever possible: now for libraries already imported, or at
    the first call on one of their arrays.
    """
    for library in AUTODIFF_LIBRARIES:
        if sys.modules.get(library) is not None and library not in _adapters:
            _load_adapter(library)


def traced_by_torch_compile() -> bool:
    """Whether ``torch.compile`` is tracing the current call (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.compiler.is_compiling())


def adapter_for(x: object) -> Adapter | None:
    """The adapter that registers the fused gradient rules for ``x``'s library, if any.

    ``None`` for libraries without autodiff (NumPy, CuPy, Dask, array-api-strict): those use
    the core's forward pass and its explicit gradient entry points. Also ``None`` in the rare
    case of a first call on a torch tensor inside a ``torch.compile`` trace with the adapter
    not yet loaded (``dsnt_core`` imported before ``torch`` and never called eagerly): the
    forward pass is then traced as it is and differentiated by torch's own autograd, with
    the same results.
    """
    if is_torch_tensor(x):
        library = "torch"
    elif "jax" in sys.modules and array_api_compat.is_jax_array(x):
        library = "jax"
    else:
        return None
    if library in _adapters:
        return _adapters[library]
    if traced_by_torch_compile():
        return None
    return _load_adapter(library)
