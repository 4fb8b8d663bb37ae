"""The architecture: the kernel switch, the kernel contract, the layers' imports and the entry points.

* `use_kernels` / `set_default_kernels` / `available_kernels` / `select_kernels`: scoping (the
  default, a thread, a block), errors, the listing, and which implementation a call really gets;
* every kernel implementation satisfies the `Kernels` protocol and gives the reference results;
* the shipped packages have no import cycle; the core imports no framework, no adapter and no
  application, names no adapter, and needs nothing beyond the standard library, NumPy and
  array-api-compat; the adapters and kernels are registered as entry points.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from importlib.metadata import entry_points

import numpy as np
import pytest
from _support import (
    AUTODIFF,
    KERNEL_NAMES,
    REGULARIZERS,
    ROOT,
    SHIPPED_PACKAGES,
    fused_results,
    make_backend,
    package_modules,
    run_in_thread,
    skip_reason,
)

import dsnt_core
from dsnt_core.composed import composed_dsnt_loss
from dsnt_core.kernels import (
    ArrayAPIKernels,
    KernelInfo,
    Kernels,
    NumPyKernels,
    array_api_kernels,
    current_kernels,
    get_kernels,
    select_kernels,
    set_default_kernels,
)

SHIPPED_KERNELS = ("array-api", "numpy", "torch-native", "torch-compile")
ADAPTERS = ("dsnt_torch", "dsnt_jax", "dsnt_cupy")
APPLICATIONS = ("dsnt_apps", "dsnt_benchmarks")
FRAMEWORKS = ("torch", "jax", "jaxlib", "cupy", "dask")
APPLICATION_DEPENDENCIES = ("matplotlib", "tqdm", "dsntnn", "kornia")
CORE_DEPENDENCIES = ("numpy", "array_api_compat")
NUMPY_LOGITS = np.zeros((2, 4, 4))


def _run_python(code, **env):
    """Run ``code`` in a fresh interpreter (outside the repository) and return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT.parent,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# ------------------------------------------------------------------------ use_kernels: scoping


def test_a_with_block_restores_the_previous_choice_even_when_it_raises():
    before = current_kernels()
    with dsnt_core.use_kernels("numpy"):
        with pytest.raises(RuntimeError, match="inside the block"):
            with dsnt_core.use_kernels("array-api"):
                assert current_kernels() == "array-api"
                raise RuntimeError("inside the block")
        assert current_kernels() == "numpy"
    assert current_kernels() == before


def test_a_plain_call_chooses_for_its_own_thread_from_then_on():
    barrier = threading.Barrier(2, timeout=60)

    def worker():
        dsnt_core.use_kernels("array-api")
        barrier.wait()  # the main thread looks now
        barrier.wait()
        return current_kernels(), select_kernels(NUMPY_LOGITS)

    before = current_kernels()
    thread_result = {}
    thread = threading.Thread(target=lambda: thread_result.update(value=worker()))
    thread.start()
    barrier.wait()
    in_main = current_kernels()
    barrier.wait()
    thread.join(timeout=60)
    assert in_main == current_kernels() == before
    assert thread_result["value"] == ("array-api", array_api_kernels())


def test_the_default_holds_in_every_thread_that_has_not_chosen(default_kernels):
    set_default_kernels("array-api")
    assert current_kernels() == "array-api"
    assert run_in_thread(current_kernels) == "array-api"
    assert run_in_thread(select_kernels, NUMPY_LOGITS) is array_api_kernels()
    with dsnt_core.use_kernels("numpy"):  # a thread's own choice wins over the default
        assert current_kernels() == "numpy"
        assert run_in_thread(current_kernels) == "array-api"
    assert current_kernels() == "array-api"

    def chose_then_default_changed():
        with dsnt_core.use_kernels("numpy"):
            set_default_kernels("auto")
            return current_kernels()

    assert run_in_thread(chose_then_default_changed) == "numpy"
    assert current_kernels() == "auto"


def test_a_with_block_holds_in_its_own_thread_only():
    barrier = threading.Barrier(3, timeout=60)
    seen = {}

    def worker(name):
        with dsnt_core.use_kernels(name):
            barrier.wait()  # both workers are inside their blocks
            seen[name] = (current_kernels(), select_kernels(NUMPY_LOGITS))
            barrier.wait()  # the main thread has looked too
        seen[f"{name} after"] = current_kernels()

    before = current_kernels()
    threads = [threading.Thread(target=worker, args=(name,)) for name in ("array-api", "numpy")]
    for thread in threads:
        thread.start()
    barrier.wait()
    in_main = current_kernels()
    barrier.wait()
    for thread in threads:
        thread.join(timeout=60)
    assert in_main == before
    assert seen["array-api"] == ("array-api", array_api_kernels())
    assert seen["numpy"] == ("numpy", get_kernels("numpy"))
    assert seen["array-api after"] == seen["numpy after"] == before
    assert current_kernels() == before


def _pause_before_entering(name, arrived, resume):
    """A thread that runs ``with use_kernels(name): pass`` and stops just before ``__enter__``."""

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "__enter__":
            arrived.set()
            resume.wait(60)

    def run():
        sys.settrace(tracer)
        try:
            with dsnt_core.use_kernels(name):
                pass
        finally:
            sys.settrace(None)

    thread = threading.Thread(target=run)
    thread.start()
    assert arrived.wait(60), "the thread never reached __enter__"
    return thread


def test_entering_a_with_block_never_shows_its_choice_to_other_threads():
    """Two threads stop between ``use_kernels(name)`` and ``__enter__``, then finish in turn:
    the main thread never sees their choices, and none is left behind."""
    before = current_kernels()
    first_arrived, first_resume = threading.Event(), threading.Event()
    first = _pause_before_entering("array-api", first_arrived, first_resume)
    try:
        during = current_kernels()
        second_arrived, second_resume = threading.Event(), threading.Event()
        second = _pause_before_entering("numpy", second_arrived, second_resume)
    finally:
        first_resume.set()
        first.join(timeout=60)
    second_resume.set()
    second.join(timeout=60)
    after = current_kernels()
    assert (during, after) == (before, before)


# ------------------------------------------------------------------------ use_kernels: errors


def test_an_unknown_name_is_refused_with_the_choices_and_changes_nothing():
    before = current_kernels(), run_in_thread(current_kernels)
    with pytest.raises(ValueError, match="kernels must be one of") as raised:
        dsnt_core.use_kernels("cuda")
    for name in ("auto", *SHIPPED_KERNELS):
        assert repr(name) in str(raised.value)
    assert "'cuda'" in str(raised.value)
    with pytest.raises(ValueError, match="kernels must be one of"):
        with dsnt_core.use_kernels("numpy-fast"):
            pass
    with pytest.raises(ValueError, match="kernels must be one of"):
        set_default_kernels("fast")
    assert (current_kernels(), run_in_thread(current_kernels)) == before


@pytest.mark.parametrize("value", [None, 1, True, ["numpy"], b"numpy"])
def test_a_name_that_is_not_a_str_is_a_type_error(value):
    before = current_kernels(), run_in_thread(current_kernels)
    for choose in (dsnt_core.use_kernels, set_default_kernels):
        with pytest.raises(TypeError, match=r"kernels must be a str.*got " + type(value).__name__):
            choose(value)
    assert (current_kernels(), run_in_thread(current_kernels)) == before


# ---------------------------------------------------------------- available and selected kernels


def test_available_kernels_lists_every_implementation_and_why_not():
    listed = dsnt_core.available_kernels()
    names = [info.name for info in listed]
    assert len(names) == len(set(names)) and "auto" not in names
    assert set(SHIPPED_KERNELS) <= set(names)
    assert names == list(KERNEL_NAMES)
    for info in listed:
        assert isinstance(info, KernelInfo) and isinstance(info.available, bool), info
        assert isinstance(info.libraries, tuple) and info.description, info
        assert info.available == (info.reason == ""), info  # a reason exactly when unavailable
    by_name = {info.name: info for info in listed}
    assert by_name["array-api"].available and by_name["array-api"].libraries == ()
    assert by_name["numpy"].available and by_name["numpy"].libraries == ("numpy",)
    assert by_name["torch-native"].libraries == by_name["torch-compile"].libraries == ("torch",)


def test_without_torch_the_torch_kernels_are_listed_as_unavailable_with_the_reason():
    listed = json.loads(
        _run_python(
            """
            import importlib.abc, json, sys

            class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] == "torch":
                        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                    return None

            sys.meta_path.insert(0, NoTorch())
            import numpy as np
            import dsnt_core

            coords = dsnt_core.soft_argmax(np.zeros((1, 4, 4)))
            assert coords.tolist() == [[0.0, 0.0]], coords
            print(json.dumps([[k.name, k.available, k.reason] for k in dsnt_core.available_kernels()]))
            """
        )
    )
    by_name = {name: (available, reason) for name, available, reason in listed}
    assert by_name["array-api"] == (True, "") and by_name["numpy"] == (True, "")
    for name in ("torch-native", "torch-compile"):
        available, reason = by_name[name]
        assert not available and "torch" in reason, (name, reason)


@pytest.mark.backends("torch", gpu=False)
def test_native_kernels_that_cannot_be_built_say_why_and_leave_tensors_on_the_automatic_choice(backend, tmp_path):
    output = _run_python(
        """
        import json, warnings

        with warnings.catch_warnings(record=True) as caught:  # whenever the failed build is noticed
            warnings.simplefilter("always")
            import torch
            import dsnt_core
            from dsnt_core.kernels import array_api_kernels, select_kernels

            info = {k.name: k for k in dsnt_core.available_kernels()}["torch-native"]
            logits = torch.randn(2, 3, 8, 8, dtype=torch.float64)
            target = torch.zeros(2, 3, 2, dtype=torch.float64)
            with dsnt_core.use_kernels("array-api"):
                reference = dsnt_core.dsnt_loss(logits, target)
            with dsnt_core.use_kernels("torch-native"):
                chosen = select_kernels(logits)
                loss = dsnt_core.dsnt_loss(logits, target)
        print(json.dumps({
            "available": info.available,
            "reason": info.reason,
            "fallback": chosen is array_api_kernels(),
            "same loss": bool(torch.equal(loss, reference)),
            "warned": [str(w.message) for w in caught],
        }))
        """,
        CXX=str(tmp_path / "no-such-compiler"),
        TORCH_EXTENSIONS_DIR=str(tmp_path / "extensions"),
    )
    report = json.loads(output.strip().splitlines()[-1])
    assert not report["available"] and "could not build" in report["reason"], report
    assert report["fallback"] and report["same loss"], report
    assert any("could not build" in message for message in report["warned"]), report


def test_array_api_for_numpy_logits_bypasses_the_numpy_kernels():
    assert type(select_kernels(NUMPY_LOGITS)) is NumPyKernels  # the automatic choice
    with dsnt_core.use_kernels("array-api"):
        chosen = select_kernels(NUMPY_LOGITS)
        assert type(chosen) is ArrayAPIKernels and chosen is array_api_kernels()
    with dsnt_core.use_kernels("numpy"):
        assert select_kernels(NUMPY_LOGITS) is get_kernels("numpy")


@pytest.mark.backends("numpy", "array_api_strict", "jax", "cupy")
def test_choosing_torch_native_leaves_other_arrays_on_the_automatic_choice(backend):
    logits = backend.asarray(NUMPY_LOGITS)
    automatic = select_kernels(logits)
    if backend.name in ("numpy", "array_api_strict"):
        assert automatic is (get_kernels("numpy") if backend.name == "numpy" else array_api_kernels())
    with dsnt_core.use_kernels("torch-native"):
        assert current_kernels() == "torch-native"
        assert select_kernels(logits) is automatic
        backend.assert_close(dsnt_core.soft_argmax(logits), np.zeros((2, 2)), like=logits)


@pytest.mark.backends("torch", gpu=False)
def test_torch_aliases_set_the_default_of_every_thread(backend, default_kernels):
    import dsnt_torch

    dsnt_torch.use_native_kernels(True)
    assert current_kernels() == run_in_thread(current_kernels) == "torch-native"
    dsnt_torch.use_compiled_kernels(True)
    assert current_kernels() == run_in_thread(current_kernels) == "torch-compile"
    dsnt_torch.use_compiled_kernels(False)
    assert current_kernels() == run_in_thread(current_kernels) == "auto"


# ------------------------------------------------------------------------- the kernel contract


@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_every_listed_implementation_satisfies_the_kernel_protocol(name):
    try:
        implementation = get_kernels(name)
    except ImportError as error:
        pytest.skip(f"kernels {name!r} cannot be loaded here: {error}")
    assert isinstance(implementation, Kernels)
    assert implementation.name == name and implementation is get_kernels(name)
    assert isinstance(implementation.libraries, tuple) and isinstance(implementation.automatic, bool)
    reason = implementation.unavailable_reason()
    assert reason is None or (isinstance(reason, str) and reason)


OPTIONS = dict(ndim=2, temperature=0.7, sigma=1.5, reg_weight=0.8)


def _reference_case():
    """float64 logits with -inf pixels and a -inf heatmap, targets, a mask and a cotangent."""
    rng = np.random.default_rng(21)
    logits = rng.normal(scale=2.0, size=(2, 3, 7, 6))
    logits[0, 1, :, :2] = -np.inf
    logits[1, 2] = -np.inf
    target = rng.uniform(-0.8, 0.8, size=(2, 3, 2))
    mask = np.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    return logits, target, mask, rng.normal(size=(2, 3, 2))


@pytest.fixture(scope="module")
def reference():
    """The expected results: the composed form, differentiated by a framework's autodiff, per regulariser."""
    available = [name for name in AUTODIFF if skip_reason(name) is None]
    if not available:
        pytest.skip(f"the reference needs the autodiff of one of {AUTODIFF}, none of which can run here")
    framework = make_backend(available[0])
    logits, target, mask, cotangent = (framework.asarray(a) for a in _reference_case())
    ndim, temperature = OPTIONS["ndim"], OPTIONS["temperature"]

    def coords_of(z):
        return dsnt_core.dsnt(dsnt_core.flat_softmax(z, ndim=ndim, temperature=temperature), ndim=ndim)

    coords, coords_grad = framework.value_and_grad(coords_of, logits, cotangent=cotangent)
    expected = {}
    for regularizer in REGULARIZERS:

        def loss_of(z, regularizer=regularizer):
            return composed_dsnt_loss(z, target, mask=mask, regularizer=regularizer, **OPTIONS)

        loss, loss_grad = framework.value_and_grad(loss_of, logits)
        expected[regularizer] = [framework.to_numpy(a) for a in (coords, coords_grad, loss, loss_grad)]
    return expected


def test_the_reference_is_not_trivial(reference):
    coords, coords_grad, _, _ = reference["js"]
    assert np.isfinite(coords).all() and np.abs(coords_grad).max() > 1e-3
    assert (reference["js"][3][1, 2] == 0).all()  # the -inf heatmap gets no gradient
    assert len({float(r[2]) for r in reference.values()}) == len(REGULARIZERS)


def test_every_implementation_gives_the_reference_results(backend, kernels, reference):
    """Paired by conftest with the backends each implementation serves; the implementation must be the one that ran."""
    logits, target, mask, cotangent = (backend.asarray(a) for a in _reference_case())
    # An implementation that compiles the rules compiles them per option set (seconds each): the
    # JS regulariser alone, which goes through every pass, keeps the test short.
    compiles = kernels.wrap_rule(_reference_case) is not _reference_case
    for regularizer in ("js",) if compiles else REGULARIZERS:
        results = fused_results(backend, logits, target, cotangent, mask=mask, regularizer=regularizer, **OPTIONS)
        assert results.kernels is kernels
        for (name, ours), expected in zip(results.items(), reference[regularizer]):
            label = f"{name}, regularizer {regularizer}"
            backend.assert_close(ours, expected, like=logits, rtol=1e-9, atol=1e-12, err_msg=label)


# --------------------------------------------------------------------------------- the imports


def _imported_names(tree, module, is_package):
    """Absolute names of everything ``module`` imports (in functions too), relative imports resolved.

    ``from pkg import name`` gives ``pkg.name`` (a submodule, if it is one) and ``pkg``.
    """
    package_parts = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package_parts[: len(package_parts) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            yield base, tuple(alias.name for alias in node.names)


def _module_of(name, modules):
    """The longest prefix of the dotted ``name`` that is one of ``modules`` (``a.b`` for ``a.b.f``), or ``None``."""
    parts = name.split(".")
    prefixes = (".".join(parts[:n]) for n in range(len(parts), 0, -1))
    return next((prefix for prefix in prefixes if prefix in modules), None)


def _import_graph(packages):
    """Edges module -> modules of ``packages`` it imports; a submodule named in ``from`` counts as itself."""
    modules = {name: path for package in packages for name, path in package_modules(package).items()}
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for base, names in _imported_names(tree, module, path.name == "__init__.py"):
            submodules = {f"{base}.{name}" for name in names if f"{base}.{name}" in modules}
            edges |= submodules
            if len(submodules) < len(names) or not names:  # the package or module itself is imported
                edges.add(_module_of(base, modules))
        graph[module] = sorted(edges - {module, None})
    return graph


def _find_cycle(graph):
    """One import cycle as a list of modules (first = last), or ``None``."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for successor in graph.get(node, ()):
            if state.get(successor) == "open":
                return [*stack[stack.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_import_graph_resolves_relative_imports_and_submodules():
    graph = _import_graph(["dsnt_core"])
    assert "dsnt_core.ops.dsnt" in graph["dsnt_core.kernels.array_api"]  # from ..ops import dsnt as expectation
    assert "dsnt_core.kernels" in graph["dsnt_core.ops.soft_argmax"]  # from ..kernels import Kernels, ...
    assert "dsnt_core.kernels.array_api" in graph["dsnt_core.ops.soft_argmax"]  # from ..kernels.array_api import
    assert "dsnt_core._backends" in graph["dsnt_core"]  # from . import _backends


def test_the_shipped_packages_have_no_import_cycle():
    present = [package for package, folder in SHIPPED_PACKAGES.items() if folder.is_dir()]
    missing = sorted(set(SHIPPED_PACKAGES) - set(present))
    assert "dsnt_core" in present
    graph = _import_graph(present)
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    if missing:
        pytest.skip(f"checked {present}; not there yet: {missing}")


def test_importing_the_core_loads_no_adapter_framework_or_application():
    loaded = json.loads(
        _run_python(
            """
            import json, sys
            import dsnt_core
            after_import = sorted(sys.modules)
            import numpy as np
            import dsnt_cupy
            dsnt_core.dsnt_loss_value_and_grad(np.zeros((1, 4, 4)), np.zeros((1, 2)))
            print(json.dumps({"import": after_import, "numpy call": sorted(sys.modules)}))
            """
        )
    )
    forbidden = (*ADAPTERS, *APPLICATIONS, *FRAMEWORKS, *APPLICATION_DEPENDENCIES)
    assert not [m for m in loaded["import"] if m.split(".")[0] in forbidden]
    # Using the core on NumPy arrays through the CuPy adapter module pulls in no framework either.
    assert not [m for m in loaded["numpy call"] if m.split(".")[0] in (*FRAMEWORKS, *APPLICATIONS)]


def _names_in_code(tree):
    """Identifiers of the code, and its string constants that are dotted names (``"pkg.module:attr"``).

    Docstrings and prose (a message that mentions a package) are not names the code uses.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*(:\w+)?", node.value):
                yield node.value
        elif isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.alias):
            yield node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_the_name_finder_sees_imports_and_module_strings_but_not_prose():
    code = """
import dsnt_jax
from dsnt_torch.native import KERNELS
module = importlib.import_module("dsnt_cupy.cuda_kernels")
def f():
    \"\"\"Docstring naming dsnt_torch.\"\"\"
    raise TypeError("the modules of dsnt_torch do so")
"""
    names = set(_names_in_code(ast.parse(code)))
    assert {"dsnt_jax", "dsnt_torch.native", "dsnt_cupy.cuda_kernels"} <= names
    assert not [name for name in names if "dsnt_torch do" in name or "Docstring" in name]


def test_the_core_never_names_an_adapter():
    named = {}
    for module, path in package_modules("dsnt_core").items():
        names = set(_names_in_code(ast.parse(path.read_text())))
        found = sorted(name for name in names if name.split(".")[0].split(":")[0] in ADAPTERS)
        if found:
            named[module] = found
    assert named == {}, f"the core names adapters (it must find them through entry points): {named}"


def test_the_core_imports_only_the_standard_library_numpy_and_array_api_compat():
    allowed = {*sys.stdlib_module_names, *CORE_DEPENDENCIES, "dsnt_core"}
    outside = {}
    for module, path in package_modules("dsnt_core").items():
        for base, _ in _imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            if base.split(".")[0] not in allowed:
                outside.setdefault(module, set()).add(base)
    assert outside == {}, f"the core imports beyond {CORE_DEPENDENCIES} and the standard library: {outside}"


def test_adapters_and_kernels_are_registered_as_entry_points():
    adapters = {entry.name: entry.value for entry in entry_points(group="dsnt_core.adapters")}
    kernels = {entry.name: entry.value for entry in entry_points(group="dsnt_core.kernels")}
    assert adapters.get("torch") == "dsnt_torch.autograd" and adapters.get("jax") == "dsnt_jax.adapter", adapters
    assert kernels.get("torch-native") == "dsnt_torch.native:KERNELS", kernels
    assert kernels.get("torch-compile") == "dsnt_torch.compiled:KERNELS", kernels
    modules = {name for package in SHIPPED_PACKAGES for name in package_modules(package)}
    for value in (*adapters.values(), *kernels.values()):
        assert value.split(":")[0] in modules, f"{value} is not a module of the shipped packages"


@pytest.mark.backends(*AUTODIFF)
def test_each_registered_adapter_loads_and_serves_its_arrays(backend):
    (entry,) = [entry for entry in entry_points(group="dsnt_core.adapters") if entry.name == backend.name]
    adapter = entry.load()
    assert callable(adapter.soft_argmax) and callable(adapter.dsnt_loss)
    assert dsnt_core._backends.adapter_for(backend.asarray(NUMPY_LOGITS)) is adapter
