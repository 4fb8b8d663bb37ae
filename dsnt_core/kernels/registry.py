"""The one switch between kernel implementations: `use_kernels`, `available_kernels`, `select_kernels`.

Two implementations come with the core (``"array-api"`` and ``"numpy"``); adapters add theirs
through the ``dsnt_core.kernels`` entry-point group (``"torch-native"``, ``"torch-compile"``),
loaded only when they are named or listed, so that choosing nothing imports no framework.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import TracebackType

from .._backends import library_of, traced_by_torch_compile
from .._typing import Array
from .array_api import ArrayAPIKernels
from .contract import Kernels
from .numpy_fast import NumPyKernels

KERNEL_GROUP = "dsnt_core.kernels"
"""Entry-point group of kernel implementations: name = what `use_kernels` takes, value = an instance."""

AUTO = "auto"
_BUILT_IN: dict[str, Kernels] = {k.name: k for k in (ArrayAPIKernels(), NumPyKernels())}
_ENVIRONMENT_ALIASES = {"DSNT_TORCH_NATIVE": "torch-native", "DSNT_TORCH_COMPILE": "torch-compile"}


@functools.cache
def _registered() -> dict[str, EntryPoint]:
    """Entry points of the kernel group by name (not loaded)."""
    return {entry.name: entry for entry in entry_points(group=KERNEL_GROUP)}


def kernel_names() -> tuple[str, ...]:
    """Every name `use_kernels` accepts: ``"auto"``, the built-in and the registered ones."""
    return (AUTO, *_BUILT_IN, *(name for name in _registered() if name not in _BUILT_IN))


_loaded: dict[str, Kernels] = dict(_BUILT_IN)  # a plain dict: torch.compile traces lookups in it


def get_kernels(name: str) -> Kernels:
    """The implementation called ``name`` (loading its entry point the first time).

    Parameters
    ----------
    name : str
        The name of an implementation in `available_kernels` (not ``"auto"``).

    Returns
    -------
    Kernels
        The implementation.

    Raises
    ------
    ValueError
        If no implementation has that name.

    Examples
    --------
    >>> from dsnt_core.kernels import get_kernels
    >>> get_kernels("numpy").libraries
    ('numpy',)
    """
    kernels = _loaded.get(name)
    if kernels is None:
        entry = _registered().get(name)
        if entry is None:
            raise ValueError(f"kernels must be one of {list(kernel_names())}, got {name!r}")
        kernels = _loaded[name] = entry.load()
    return kernels


def _initial_choice() -> str:
    """``"auto"``, or the implementation an environment alias (``DSNT_TORCH_NATIVE=1``...) names."""
    for variable, name in _ENVIRONMENT_ALIASES.items():
        if os.environ.get(variable, "0") == "1":
            return name
    return AUTO


_default_choice = _initial_choice()
# Each thread's own choice. A thread-local rather than a ContextVar: torch.compile traces
# attribute reads of it.
_thread_choice = threading.local()


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"kernels must be a str, one of {list(kernel_names())}, got {type(name).__name__}")
    if name != AUTO:
        get_kernels(name)  # ValueError for an unknown name; loads a registered one now, outside any trace
    return name


def set_default_kernels(name: str) -> None:
    """Choose the kernel implementation for every thread that has not chosen its own.

    The process-wide counterpart of `use_kernels`, which chooses for the current thread.
    At start-up the default is ``"auto"``, or what an environment alias names
    (``DSNT_TORCH_NATIVE=1``: ``"torch-native"``; ``DSNT_TORCH_COMPILE=1``: ``"torch-compile"``).

    Parameters
    ----------
    name : str
        ``"auto"`` or the name of an implementation in `available_kernels`.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` is not an implementation's name.

    Examples
    --------
    >>> from dsnt_core.kernels import current_kernels, set_default_kernels
    >>> set_default_kernels("array-api")
    >>> current_kernels()
    'array-api'
    >>> set_default_kernels("auto")
    """
    global _default_choice
    _default_choice = _checked_name(name)


def current_kernels() -> str:
    """The name chosen for the current thread: its own choice, else the process-wide default.

    Returns
    -------
    str
        ``"auto"`` or the name of an implementation.

    Examples
    --------
    >>> import dsnt_core
    >>> from dsnt_core.kernels import current_kernels
    >>> with dsnt_core.use_kernels("array-api"):
    ...     current_kernels()
    'array-api'
    """
    chosen: str | None = getattr(_thread_choice, "name", None)
    return _default_choice if chosen is None else chosen


class use_kernels:  # noqa: N801 - a function to the user, a class to be a context manager too
    """Choose the kernel implementation of the fused operations, for the current thread.

    Called on its own, the choice holds in this thread from then on. Used as a context
    manager, it holds inside the block only, and the thread's previous choice comes back on
    leaving it, exception or not. Other threads are never affected: they follow their own
    choice or the process-wide default (`dsnt_core.kernels.set_default_kernels`).

    The chosen implementation runs the arrays it applies to (its library, device and
    tracing state); other arrays keep the automatic choice, so one switch never breaks a
    call. ``"auto"`` (the start) picks, for each array, the fastest implementation made for
    its library and device that can run here (the NumPy kernels for NumPy arrays, the
    array-API ones where nothing else applies).

    Parameters
    ----------
    name : str
        ``"auto"`` or the name of an implementation in `available_kernels`.

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    ValueError
        If ``name`` is not an implementation's name.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> with dsnt_core.use_kernels("array-api"):
    ...     coords = dsnt_core.soft_argmax(np.zeros((1, 4, 4)))
    >>> dsnt_core.kernels.current_kernels()
    'auto'
    """

    def __init__(self, name: str = AUTO) -> None:
        self.name = _checked_name(name)
        self._previous: str | None = getattr(_thread_choice, "name", None)
        _thread_choice.name = self.name

    def __enter__(self) -> use_kernels:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        _thread_choice.name = self._previous

    def __repr__(self) -> str:
        return f"use_kernels({self.name!r})"


@dataclass(frozen=True)
class KernelInfo:
    """One kernel implementation as `available_kernels` reports it.

    Parameters
    ----------
    name : str
        What `use_kernels` takes.
    description : str
        What it is and what it runs on.
    libraries : tuple of str
        The array libraries it serves; empty for all.
    available : bool
        Whether it can run here.
    reason : str
        Why not, when it cannot (empty when it can).

    Examples
    --------
    >>> import dsnt_core
    >>> info = dsnt_core.available_kernels()[0]
    >>> info.name, info.libraries, info.available
    ('array-api', (), True)
    """

    name: str
    description: str
    libraries: tuple[str, ...]
    available: bool
    reason: str


def _info(name: str) -> KernelInfo:
    try:
        kernels = get_kernels(name)
    except Exception as error:  # a registered package that fails to import
        return KernelInfo(name, "(could not be loaded)", (), False, f"{type(error).__name__}: {error}")
    reason = kernels.unavailable_reason()
    return KernelInfo(name, kernels.description, tuple(kernels.libraries), reason is None, reason or "")


def available_kernels() -> list[KernelInfo]:
    """Every kernel implementation, whether it can run here and, if not, why.

    Loading an adapter's implementation imports its framework, and checking a compiled one
    may build it (the PyTorch native kernels: about 30 s once per machine).

    Returns
    -------
    list of KernelInfo
        One record per implementation, the built-in ones first.

    Examples
    --------
    >>> import dsnt_core
    >>> [k.name for k in dsnt_core.available_kernels()][:2]
    ['array-api', 'numpy']
    """
    return [_info(name) for name in kernel_names() if name != AUTO]


_automatic_by_library: dict[str, tuple[Kernels, ...]] = {}  # a plain dict, as _loaded


def _automatic_candidates(library: str) -> tuple[Kernels, ...]:
    """The automatic implementations made for ``library``, built-in ones last.

    Registered implementations follow the naming rule ``"<library>-<name>"`` (``"torch-triton"``),
    so only those of the array's own library are loaded. Loading reads entry points, which a
    ``torch.compile`` trace cannot do: inside one, a library not seen before gets the built-in
    implementations only.
    """
    candidates = _automatic_by_library.get(library)
    if candidates is None:
        if traced_by_torch_compile():
            return tuple(_BUILT_IN.values())
        registered = []
        for name in _registered():
            if name.startswith(f"{library}-") and name not in _BUILT_IN:
                try:
                    kernels = get_kernels(name)
                except Exception:  # a registered package that fails to import is skipped (available_kernels says why)
                    continue
                if kernels.automatic:
                    registered.append(kernels)
        candidates = _automatic_by_library[library] = (*registered, *_BUILT_IN.values())
    return candidates


def _automatic(logits: Array) -> Kernels:
    for kernels in _automatic_candidates(library_of(logits)):
        if kernels.automatic and kernels.libraries and kernels.applies_to(logits):
            return kernels
    return _BUILT_IN["array-api"]


def select_kernels(logits: Array) -> Kernels:
    """The implementation for a call on ``logits``: the chosen one where it applies, else the automatic one.

    Parameters
    ----------
    logits : array
        The logits of the call.

    Returns
    -------
    Kernels
        The implementation that runs the call.

    Examples
    --------
    >>> import numpy as np
    >>> import dsnt_core
    >>> from dsnt_core.kernels import select_kernels
    >>> with dsnt_core.use_kernels("auto"):  # NumPy arrays: the NumPy kernels
    ...     select_kernels(np.zeros((4, 4))).name
    'numpy'
    """
    name = current_kernels()
    if name != AUTO:
        chosen = get_kernels(name)
        if chosen.applies_to(logits):
            return chosen
    return _automatic(logits)


def array_api_kernels() -> Kernels:
    """The array-API implementation: the fallback every adapter may use (e.g. for double backward).

    Returns
    -------
    ArrayAPIKernels
        The built-in instance.

    Examples
    --------
    >>> from dsnt_core.kernels import array_api_kernels
    >>> array_api_kernels().name
    'array-api'
    """
    return _BUILT_IN["array-api"]
