"""The command line: demo, train and bench run end to end (tiny sizes) and write their outputs."""

from __future__ import annotations

import json

import pytest

from dsnt_core.cli import main


def test_demo_reports_agreement(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "agree to 1e-10: yes" in out
    assert "numpy" in out


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_train_writes_a_figure(framework, tmp_path):
    pytest.importorskip(framework)
    pytest.importorskip("matplotlib", reason="demo extra")
    pytest.importorskip("tqdm", reason="demo extra")
    output = tmp_path / "train.png"
    assert main(["train", "--framework", framework, "--steps", "3", "--output", str(output)]) == 0
    assert output.stat().st_size > 10_000


def test_bench_writes_table_json_and_chart(tmp_path):
    pytest.importorskip("torch")
    from dsnt_core.benchmarking import run_suite

    results = run_suite(
        tmp_path,
        shapes={"tiny (2, 3, 8, 8)": (2, 3, 8, 8)},
        sweep=[(1, 2, 8, 8), (1, 2, 16, 16)],
        repeats=1,
        print_fn=lambda _: None,
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    # The logits plus a few numbers per heatmap (a visible share only for such tiny maps).
    assert 1.0 <= saved["saved_bytes"]["ours"] < 1.2 < 3.0 < saved["saved_bytes"]["dsntnn"]
    assert all(t > 0 for group in results["groups"] for t in group["times"].values())
    assert "speed-up over dsntnn" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").exists()
