"""Which library an array comes from, its namespace and device, and the adapter registered for it.

All backend detection of the core lives here. No framework is imported: a torch tensor can
only exist once ``torch`` has been imported by someone else, so the checks look it up in
``sys.modules``. Framework adapters are found through the ``dsnt_core.adapters`` entry-point
group (``torch = "dsnt_torch.adapter"``, ...), so the core never names them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any, Protocol

import array_api_compat

from ._typing import Array, Device, Namespace

ADAPTER_GROUP = "dsnt_core.adapters"
"""Entry-point group of framework adapters: name = the library (``library_of``), value = a module."""


class Adapter(Protocol):
    """A framework adapter: the fused operations with the core's gradient rules registered.

    Its functions receive validated inputs and the kernel implementation chosen for the call.
    """

    def soft_argmax(self, logits: Array, *, ndim: int, temperature: float, kernels: Any) -> Array: ...

    def dsnt_loss(self, logits: Array, target: Array, mask: Array | None, options: Any, *, kernels: Any) -> Array: ...


def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch has been imported, else ``None`` (torch is never imported here)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def is_torch_tensor(x: object) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (subclasses and tracing proxies of it included)."""
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(x, tensor_type)


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
        If an argument is not an array, or if the arrays come from different libraries.
    """
    given = {name: a for name, a in arrays.items() if a is not None}
    for name, value in given.items():
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
        if library in sys.modules and library not in _adapters:
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
