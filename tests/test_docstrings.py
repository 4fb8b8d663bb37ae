"""Every docstring example in the package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dsnt_core


def _modules():
    # __main__ runs the command line on import: it has no examples to run.
    names = [f"dsnt_core.{m.name}" for m in pkgutil.iter_modules(dsnt_core.__path__) if m.name != "__main__"]
    names += ["dsnt_torch.modules", "dsnt_torch._autograd", "dsnt_jax", "dsnt_cupy"]
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name):
    if module_name.startswith("dsnt_torch"):
        pytest.importorskip("torch", reason="torch is not installed")
    if module_name.startswith("dsnt_jax"):
        pytest.importorskip("jax", reason="jax is not installed")
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_public_functions_have_examples():
    for name in dsnt_core.__all__:
        doc = getattr(dsnt_core, name).__doc__ or ""
        assert "Examples" in doc and ">>>" in doc, name
