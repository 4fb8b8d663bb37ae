"""The static checks: mypy over the shipped packages, numpydoc validation of every public docstring.

mypy runs with the ``[tool.mypy]`` configuration of ``pyproject.toml``. numpydoc validates
everything in the ``__all__`` of the public modules, and the public methods of the classes
among them, with every check except `EXCLUDED` and `EXCLUDED_FOR`; the examples of those
docstrings run too (``tests/test_docstrings.py`` runs those of whole modules, which misses
the objects defined in ``dsnt_core.ops`` and ``dsnt_core.kernels``).
"""

from __future__ import annotations

import doctest
import enum
import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

import pytest

ROOT = Path(__file__).resolve().parents[1]

PUBLIC_MODULES = ("dsnt_core", "dsnt_core.kernels", "dsnt_torch", "dsnt_jax", "dsnt_cupy")
FRAMEWORKS = {"dsnt_torch": "torch", "dsnt_jax": "jax"}

EXCLUDED = {
    "ES01": "an extended summary is optional: docstrings stay short (summary, parameters, returns, example)",
    "SA01": "a See Also section is optional: related functions are named in the text",
}
"""Checks skipped for every object, with the reason."""

EXCLUDED_FOR = {
    "method": {
        "EX01": "a method's example is its class's: the class docstring shows the object in use "
        "(the kernel passes, a module's forward called through the module)",
    },
    "enum": {
        "PR01": "the signature numpydoc sees is Enum's lookup and functional API (value, names, module...), "
        "not something to document per enum; the members carry their own docstrings",
    },
    "protocol": {
        "PR01": "a Protocol is not instantiated: its signature is typing's placeholder (*args, **kwargs)",
    },
}
"""Checks skipped for one kind of object, with the reason."""


# ------------------------------------------------------------------------------------ mypy


def test_mypy():
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"mypy exited with status {result.returncode}:\n{result.stdout}{result.stderr}", pytrace=False)


# -------------------------------------------------------------------------------- numpydoc


def _public_objects() -> list[Any]:
    """``(qualified name, object, is method)`` of each public object once, or a skipped param."""
    found: list[Any] = []
    seen: set[int] = set()

    def add(name: str, obj: Any, is_method: bool) -> None:
        if id(obj) not in seen:
            seen.add(id(obj))
            found.append(pytest.param(name, obj, is_method, id=name))

    for module_name in PUBLIC_MODULES:
        framework = FRAMEWORKS.get(module_name)
        if framework is not None and importlib.util.find_spec(framework) is None:
            skip = pytest.mark.skip(reason=f"{framework} is not installed")
            found.append(pytest.param(module_name, None, False, id=module_name, marks=skip))
            continue
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            add(f"{module_name}.{name}", obj, False)
            if inspect.isclass(obj):
                for attribute, value in vars(obj).items():
                    if not attribute.startswith("_") and inspect.isfunction(value):
                        add(f"{module_name}.{name}.{attribute}", value, True)
    return found


PUBLIC_OBJECTS = _public_objects()


def _excluded(obj: Any, is_method: bool) -> dict[str, str]:
    excluded = dict(EXCLUDED)
    if is_method:
        excluded.update(EXCLUDED_FOR["method"])
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        excluded.update(EXCLUDED_FOR["enum"])
    if inspect.isclass(obj) and Protocol in obj.__mro__:
        excluded.update(EXCLUDED_FOR["protocol"])
    return excluded


@pytest.mark.parametrize(("name", "obj", "is_method"), PUBLIC_OBJECTS)
def test_numpydoc(name, obj, is_method):
    from numpydoc.validate import validate

    excluded = _excluded(obj, is_method)
    errors = [(code, message) for code, message in validate(name)["errors"] if code not in excluded]
    if errors:
        pytest.fail(f"{name}:\n" + "\n".join(f"  {code} {message}" for code, message in errors), pytrace=False)


@pytest.mark.parametrize(("name", "obj", "is_method"), PUBLIC_OBJECTS)
def test_examples_run(name, obj, is_method):
    """The docstring's examples run and print what they show (tests/test_docstrings.py covers modules only)."""
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    if runner.failures:
        pytest.fail(f"{name}: {runner.failures} example(s) failed (doctest's report: captured stdout)", pytrace=False)
