"""Static types for arrays and array namespaces of any library that follows the array API.

``Array`` is a structural type: the attributes and operators that dsnt-core uses, which
NumPy, PyTorch, JAX, CuPy, Dask and array-api-strict arrays all have. ``Namespace`` is the
module that implements the standard for an array (``array_api_compat.array_namespace(x)``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Protocol, TypeAlias, TypeVar

Namespace: TypeAlias = ModuleType
"""An array-API namespace such as ``array_api_compat.numpy`` or ``jax.numpy``."""

DType: TypeAlias = Any
"""A dtype object of some array library (each library has its own class)."""

Device: TypeAlias = Any
"""A device object of some array library, as ``array_api_compat.device(x)`` returns it."""


class Array(Protocol):
    """What dsnt-core needs of an array: shape, dtype and the arithmetic operators."""

    @property
    def shape(self) -> tuple[Any, ...]: ...

    @property
    def dtype(self) -> DType: ...

    @property
    def ndim(self) -> int: ...

    def __getitem__(self, key: Any, /) -> Array: ...

    def __add__(self, other: Any, /) -> Array: ...

    def __radd__(self, other: Any, /) -> Array: ...

    def __sub__(self, other: Any, /) -> Array: ...

    def __rsub__(self, other: Any, /) -> Array: ...

    def __mul__(self, other: Any, /) -> Array: ...

    def __rmul__(self, other: Any, /) -> Array: ...

    def __truediv__(self, other: Any, /) -> Array: ...

    def __rtruediv__(self, other: Any, /) -> Array: ...

    def __pow__(self, other: Any, /) -> Array: ...

    def __neg__(self) -> Array: ...

    def __gt__(self, other: Any, /) -> Array: ...

    def __ge__(self, other: Any, /) -> Array: ...

    def __lt__(self, other: Any, /) -> Array: ...

    def __le__(self, other: Any, /) -> Array: ...

    def __and__(self, other: Any, /) -> Array: ...

    def __invert__(self) -> Array: ...


ArrayT = TypeVar("ArrayT", bound=Array)
"""The array type of a public function's input, which is also the type of its result."""
