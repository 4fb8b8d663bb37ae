"""The command line: demo, train and bench run end to end (tiny sizes) and write their outputs."""

from __future__ import annotations

import contextlib
import doctest
import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import dsnt_apps
import dsnt_benchmarks
import pytest
from dsnt_apps.cli import main
from dsnt_benchmarks.candidate import STEP_FWD_BWD, Candidate
from dsnt_benchmarks.timing import call

import dsnt_core


def test_demo_reports_agreement(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "agree to 1e-10: yes" in out
    assert "numpy" in out


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_train_writes_a_figure(framework, tmp_path):
    pytest.importorskip(framework)
    if framework == "jax":
        pytest.importorskip("flax", reason="the JAX trainer is built from the Flax modules (flax extra)")
    pytest.importorskip("matplotlib", reason="demo extra")
    pytest.importorskip("tqdm", reason="demo extra")
    output = tmp_path / "train.png"
    assert main(["train", "--framework", framework, "--steps", "3", "--output", str(output)]) == 0
    assert output.stat().st_size > 10_000


def test_bench_writes_table_json_and_chart(tmp_path):
    pytest.importorskip("torch")
    from dsnt_benchmarks import run_suite

    results = run_suite(
        tmp_path,
        shapes={"tiny (2, 3, 8, 8)": (2, 3, 8, 8)},
        sweep=[(1, 2, 8, 8), (1, 2, 16, 16)],
        repeats=1,
        print_fn=lambda _: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    # The logits plus a few numbers per heatmap (a visible share only for such tiny maps).
    assert 1.0 <= saved["saved_bytes"]["ours"] < 1.2 < 3.0 < saved["saved_bytes"]["dsntnn"]
    assert all(t > 0 for group in results["groups"] for t in group["times"].values())
    # results.json keeps its layout: the docs and earlier runs are read with it.
    assert list(saved)[:5] == ["groups", "sweep", "compiled", "saved_bytes", "environment"]
    names = list(next(g for g in saved["groups"] if g["library"] == "torch")["times"])
    assert names[:5] == [
        "exp floor",
        "ours soft_argmax fwd",
        "ours soft_argmax fwd+bwd",
        "ours step fwd",
        "ours step fwd+bwd",
    ]
    assert {"naive step fwd+bwd", "dsntnn step fwd+bwd"} <= set(names)
    assert list(saved["compiled"])[:3] == ["first call (s)", "exp floor", "compiled step fwd+bwd"]
    assert list(saved["sweep"]) == ["128", "512"]
    report = (tmp_path / "results.md").read_text()
    assert "speed-up over dsntnn" in report
    assert "| torch | tiny (2, 3, 8, 8) | dsntnn step fwd+bwd |" in report
    assert (tmp_path / "results.png").exists()


def test_timing_switches_the_candidates_kernels_and_restores_them(monkeypatch):
    entered: list[str] = []
    running: list[list[str]] = []

    @contextlib.contextmanager
    def use_kernels(name):
        entered.append(name)
        try:
            yield
        finally:
            entered.remove(name)

    monkeypatch.setattr(dsnt_core, "use_kernels", use_kernels, raising=False)
    call(Candidate("native", STEP_FWD_BWD, lambda: running.append(list(entered)), kernels="torch-native"))
    call(Candidate("naive", STEP_FWD_BWD, lambda: running.append(list(entered))))
    assert running == [["torch-native"], []]
    assert entered == []


def test_candidate_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="kind must be one of"):
        Candidate("ours", "step backward", lambda: None)


@pytest.mark.parametrize("package", [dsnt_apps, dsnt_benchmarks], ids=lambda p: p.__name__)
def test_docstring_examples(package):
    # __main__ runs the command line on import: it has no examples to run.
    names = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__) if m.name != "__main__"]
    failed = {name: doctest.testmod(importlib.import_module(name)).failed for name in names}
    assert failed == dict.fromkeys(names, 0)


def _commands() -> list:
    """``python -m dsnt_apps``, and the ``dsnt`` script where this interpreter's environment installed it."""
    commands = [pytest.param([sys.executable, "-m", "dsnt_apps"], id="python -m dsnt_apps")]
    script = shutil.which("dsnt", path=str(Path(sys.executable).parent))
    if script is not None:
        commands.append(pytest.param([script], id="dsnt"))
    return commands


@pytest.mark.parametrize("command", _commands())
def test_command_help_lists_the_subcommands(command):
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dsnt ")
    assert "{demo,train,bench}" in result.stdout


def test_the_library_imports_no_application_code():
    code = (
        "import sys, dsnt_core\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('dsnt_apps', 'dsnt_benchmarks', 'matplotlib', 'tqdm', 'dsntnn', 'kornia')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["train", "--steps", "0"], "--steps: expected an integer of at least 1, got 0"),
        (["train", "--steps", "-5"], "--steps: expected an integer of at least 1, got -5"),
        (["train", "--steps", "many"], "--steps: expected an integer of at least 1, got 'many'"),
        (["train", "--seed", "-1"], "--seed: expected an integer of at least 0, got -1"),
        (["train", "--output", "figure.txt"], "--output: expected a path ending in .png"),
        (["demo", "--seed", "x"], "--seed: expected an integer of at least 0"),
    ],
)
def test_invalid_values_are_rejected_before_any_work(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_stops_before_training(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib", reason="demo extra")
    pytest.importorskip("tqdm", reason="demo extra")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--output", str(blocker / "sub" / "train.png")])
    assert exit_info.value.code == 2
    assert "--output: cannot create the folder" in capsys.readouterr().err


def test_a_missing_output_folder_is_created(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib", reason="demo extra")
    pytest.importorskip("tqdm", reason="demo extra")
    output = tmp_path / "new" / "nested" / "train.png"
    assert main(["train", "--steps", "1", "--output", str(output)]) == 0
    assert output.stat().st_size > 10_000


@pytest.mark.parametrize("command", [[], ["demo"], ["train"], ["bench"]])
def test_help_is_plain_text_with_every_default(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text and ":func:" not in text
    if command == ["train"]:
        for default in ("(default: torch)", "(default: 400)", "(default: 0)", "dsnt_train.png"):
            assert default in text
    if command == ["bench"]:
        assert "(default: False)" in text and "benchmarks/results" in text
