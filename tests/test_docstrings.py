"""Every docstring example in the library and its adapters runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib

import pytest
from _support import SHIPPED_PACKAGES, package_modules, skip_reason

import dsnt_core

# The applications' and benchmarks' examples run in test_cli.py, with the command line.
APPLICATIONS = ("dsnt_apps", "dsnt_benchmarks")
FRAMEWORKS = {"dsnt_torch": "torch", "dsnt_jax": "jax"}


def _modules():
    names = [name for package in SHIPPED_PACKAGES if package not in APPLICATIONS for name in package_modules(package)]
    return sorted(name for name in names if not name.endswith("__main__"))


def test_the_library_and_every_adapter_are_covered():
    packages = {name.split(".")[0] for name in _modules()}
    assert {"dsnt_core", "dsnt_torch", "dsnt_jax", "dsnt_cupy"} <= packages
    assert {"dsnt_core.kernels.registry", "dsnt_core.ops.soft_argmax", "dsnt_torch.native"} <= set(_modules())


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples(module_name):
    framework = FRAMEWORKS.get(module_name.split(".")[0])
    if framework is not None and skip_reason(framework) is not None:
        pytest.skip(skip_reason(framework))
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_public_functions_have_examples():
    for name in dsnt_core.__all__:
        doc = getattr(dsnt_core, name).__doc__ or ""
        assert "Examples" in doc and ">>>" in doc, name
