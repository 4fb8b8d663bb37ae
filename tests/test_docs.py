"""The documentation's code runs, and the site builds strictly."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys

import pytest
from _support import ROOT, run_in_thread, skip_reason

PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]


def python_blocks():
    for page in PAGES:
        for index, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)):
            yield pytest.param(block, id=f"{page.name}-{index}")


def _missing_requirement(code: str) -> str | None:
    for module in ("torch", "jax", "cupy"):
        if re.search(rf"^\s*(import|from) {module}\b", code, flags=re.M):
            reason = skip_reason(module)
            if reason:
                return reason
    return None


@pytest.mark.parametrize("code", list(python_blocks()))
def test_documented_code_runs(code, default_kernels):
    """In a thread of its own, so that the examples' kernel choices end with it (and the default is put back)."""
    reason = _missing_requirement(code)
    if reason:
        pytest.skip(reason)
    run_in_thread(exec, compile(code, "<docs>", "exec"), {})


def test_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs and mkdocstrings are not installed (docs extra)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()
    shutil.rmtree(tmp_path / "site")
