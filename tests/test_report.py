"""The stakeholder report: one self-contained HTML file with the runs, the Pareto chart and the tables."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.errors import PrunelabError
from core.history.report import build_report, pareto_figure, write_report
from core.history.runs import get_run, record_run
from tests.test_runs import make_report


@pytest.fixture
def three_runs():
    return [record_run(make_report(accuracy=0.9, p50=2.0, compressed=2000), label="accurate",
                       layer_sparsity={"fc1": 0.5, "fc2": 0.5}),
            record_run(make_report(accuracy=0.85, p50=1.0, compressed=1000, sparsity=0.7), label="fast"),
            record_run(make_report(accuracy=0.8, p50=1.5, compressed=1500), label="<script>alert(1)</script>",
                       notes="dominated & slow")]


def test_report_is_self_contained_and_names_every_run(three_runs, tmp_path):
    path = write_report([run.id for run in three_runs], tmp_path / "report.html")
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert re.search(r"plotly\.js v\d", text) and len(text) > 1_000_000  # the whole bundle is inlined
    assert not re.search(r"<script[^>]+src\s*=\s*[\"']?https?:", text, re.IGNORECASE)
    assert not re.search(r"<link[^>]+href\s*=\s*[\"']?https?:", text, re.IGNORECASE)
    for run in three_runs[:2]:
        assert f"#{run.id} {run.label}" in text
    assert "digits-mlp" in text and "Per-layer sparsity" in text and "Compressed size (gzip)" in text
    assert "compressed_bytes" not in text and "latency_ms" not in text  # people's words, not field names


def test_person_typed_text_is_escaped(three_runs):
    text = build_report(three_runs)
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "dominated &amp; slow" in text


def test_pareto_figure_highlights_the_front(three_runs):
    figure = pareto_figure(three_runs, three_runs[0].metrics["baseline"])
    traces = {trace.name: trace for trace in figure.data if trace.name}
    assert sorted(traces["Pareto front"].customdata) == [three_runs[0].id, three_runs[1].id]
    assert list(traces["other runs"].customdata) == [three_runs[2].id]
    sizes = dict(zip(traces["Pareto front"].customdata, traces["Pareto front"].marker.size))
    assert sizes[three_runs[0].id] > sizes[three_runs[1].id]  # larger compressed model, larger marker
    assert traces["dense baseline"].y == (97.0,)  # percent, like the axis
    assert figure.data[-1].name == "dense baseline" and figure.data[-1].text == ("dense",)  # on top, labelled
    assert all(trace.unselected.marker.opacity == 0.85 for trace in figure.data if trace.mode != "lines")


def test_report_tables_show_layer_sparsity_and_baseline(three_runs):
    text = build_report([get_run(run.id) for run in three_runs])
    layer_row = re.search(r"<tr[^>]*><td>fc1</td>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td>([^<]*)</td>", layer_row) == ["50.0%", "80.0%", "60.0%"]
    accuracy_row = re.search(r"<tr[^>]*><td>Accuracy</td>(.*?)</tr>", text).group(1)
    assert re.findall(r"<td>([^<]*)</td>", accuracy_row) == ["97.0%", "90.0%", "85.0%", "80.0%"]


def test_empty_report_is_refused():
    with pytest.raises(PrunelabError, match="at least one run"):
        build_report([])


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="the system Chromium is not installed")
def test_report_renders_offline_in_chromium(three_runs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    path = write_report([run.id for run in three_runs], tmp_path / "report.html")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
        try:
            page = browser.new_context(offline=True).new_page()
            remote = []
            page.on("request", lambda request: remote.append(request.url)
                    if not request.url.startswith(("file:", "data:", "blob:")) else None)
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .scatterlayer .point")
            assert page.locator(".scatterlayer .point").count() == 4  # three runs and the baseline
            assert remote == []
        finally:
            browser.close()


def test_cli_writes_the_report(three_runs, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "out" / "report.html"
    assert main(["report", str(three_runs[0].id), str(three_runs[1].id), "--out", str(out)]) == 0
    text = out.read_text()
    assert f"#{three_runs[0].id} accurate" in text and f"#{three_runs[1].id} fast" in text
    assert "alert(1)" not in text  # the third run was not chosen
    assert main(["report", "999", "--out", str(out)]) == 2
    assert "no run with id 999" in capsys.readouterr().err
