"""Importing the core pulls in no framework; the adapters are importable packages."""

from __future__ import annotations

import subprocess
import sys


def test_importing_dsnt_core_imports_no_framework():
    code = (
        "import sys, numpy as np, dsnt_core, dsnt_cupy\n"
        "dsnt_core.dsnt_loss_value_and_grad(np.zeros((1, 4, 4)), np.zeros((1, 2)))\n"
        "print(sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
