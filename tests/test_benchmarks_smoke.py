"""A tiny run of every benchmark, so they do not rot. Figures are printed by `make bench`, never asserted here."""
from __future__ import annotations

import importlib

import pytest

from benchmarks.run import BENCHMARKS


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_runs_quickly(name, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    module.main(quick=True)
    printed = capsys.readouterr().out
    assert "|" in printed or printed.strip(), f"benchmarks.{name} printed nothing"


@pytest.mark.slow
def test_runner_writes_nothing_in_quick_mode(tmp_path, monkeypatch, capsys):
    from benchmarks import run

    monkeypatch.setattr(run, "RESULTS", tmp_path / "RESULTS.md")
    run.main(["memory", "--quick"])
    assert "Resident memory" in capsys.readouterr().out and not (tmp_path / "RESULTS.md").exists()


def test_running_some_benchmarks_replaces_only_their_sections(tmp_path, monkeypatch):
    from benchmarks import run

    results = tmp_path / "RESULTS.md"
    monkeypatch.setattr(run, "RESULTS", results)
    names = list(run.BENCHMARKS)
    results.write_text(run.document({name: f"## {run.BENCHMARKS[name]}\n\nold {name}\n" for name in names}, names))
    monkeypatch.setattr(run, "run", lambda chosen, quick: {name: f"## {run.BENCHMARKS[name]}\n\nnew {name}\n"
                                                            for name in chosen})
    run.main(["allocation"])
    text = results.read_text()
    assert "new allocation" in text and "old allocation" not in text
    assert all(f"old {name}" in text for name in names if name != "allocation")
    order = [text.index(run.BENCHMARKS[name]) for name in names]
    assert order == sorted(order)
