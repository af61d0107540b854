"""The Tune page as a stakeholder uses it, in the system Chromium: links, undo, goals, the graph, dark mode.

Screenshots of every page (light and dark, 1280x800) go to a temporary folder, printed with ``-s``.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from tests.test_browser import (
    CHROMIUM,
    READY,
    TIMEOUT_MS,
    VIEWPORT,
    metric,
    open_tune,
    slider,
    start_server,
    stop_server,
    wait_changed,
    wait_idle,
    wait_settled,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="the system Chromium (/usr/bin/chromium) is not installed"),
]

PAGES = ("Model", "Layers", "Sensitivity", "Tune", "Recover", "History", "Export")
VIT = "tests/fixtures/transformer_models.py:tiny_vit"
CUT_TEXT = """() => [...document.querySelectorAll('[data-testid=stMetricValue] div, [data-testid=stMetricValue]')]
    .filter(node => node.scrollWidth > node.clientWidth + 1).map(node => node.innerText)"""
BACKGROUND = """() => getComputedStyle(document.querySelector('[data-testid=stApp]')).backgroundColor"""


@pytest.fixture(scope="module")
def cnn_server(tmp_path_factory):
    process, url = start_server("digits-cnn", tmp_path_factory.mktemp("prunelab-home"))
    yield url
    stop_server(process)


def release(page, layer: str, presses: int = 1, label: str = "Parameters") -> None:
    """Press ArrowRight on a layer's slider and wait for the metrics of the new plan."""
    before = metric(page, label)
    handle = slider(page, layer)
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
    wait_changed(page, label, before)
    wait_settled(page, layer)


def open_tab(page, name: str) -> None:
    """Show one of the Tune page's per-layer views."""
    page.locator("[data-testid=stButtonGroup] button", has_text=name).first.click()
    wait_idle(page)


def strip_value(page, label: str) -> str:
    """The 'dense -> pruned' text under ``label`` in the Dense -> Pruned strip."""
    strip = page.locator(".st-key-tune-fresh")
    column = strip.locator("[data-testid=stColumn]").filter(has_text=label).first
    return column.locator("strong").last.inner_text()


def test_a_copied_link_shows_the_same_sliders_and_metrics_in_a_new_browser(browser, cnn_server):
    first = browser.new_context(viewport=VIEWPORT)
    page = open_tune(first, cnn_server)
    release(page, "features.1.0", presses=3)
    release(page, "fc1", presses=2)
    page.wait_for_function("() => location.search.includes('layers=')", timeout=TIMEOUT_MS)
    link = page.url
    assert "features.1.0%3A15" in link and "fc1%3A10" in link, link
    second = browser.new_context(viewport=VIEWPORT)  # nothing shared: a new person opening the link
    other = open_tune(second, link)
    for layer, value in (("features.1.0", "15%"), ("fc1", "10%"), ("features.0.0", "0%")):
        assert slider(other, layer).get_attribute("aria-valuetext") == value, layer
    for label in ("Parameters", "Weights removed", "MACs", "Compressed (gzip)"):
        assert metric(other, label) == metric(page, label), label
    first.close()
    second.close()


def test_a_link_cannot_open_code_the_server_was_not_given(browser, cnn_server):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{cnn_server}/?model=tests/fixtures/user_models.py:mixed&sparsity=40")
    wait_idle(page)
    page.get_by_text("The link's settings could not all be used").wait_for(timeout=TIMEOUT_MS)
    assert "runs Python code on the server" in page.locator("[data-testid=stText]").first.inner_text()
    assert "digits-cnn" in page.locator("[data-testid=stCaptionContainer]", has_text="Model:").first.inner_text()
    context.close()


def test_undo_brings_back_the_plan_before_the_last_change_and_reset_clears_it(browser, cnn_server):
    context = browser.new_context(viewport=VIEWPORT)
    page = open_tune(context, cnn_server)
    release(page, "features.3.0", presses=2)
    before = metric(page, "Weights removed")
    release(page, "features.3.0", presses=1)  # one release, one change (a drag is one release too)
    assert slider(page, "features.3.0").get_attribute("aria-valuetext") == "15%"
    at_15 = metric(page, "Weights removed")  # read before the click: the rerun can be done before a later read
    page.get_by_role("button", name="Undo").click()
    wait_changed(page, "Weights removed", at_15)
    wait_settled(page, "features.3.0")
    assert slider(page, "features.3.0").get_attribute("aria-valuetext") == "10%"
    assert metric(page, "Weights removed") == before
    page.get_by_role("button", name="Reset to dense").click()
    wait_idle(page)
    page.wait_for_function("() => [...document.querySelectorAll('input[type=range]')].every(s => s.value == '0')",
                           timeout=TIMEOUT_MS)
    context.close()


def open_cell_editor(page, grid, column: int, row: int, attempts: int = 5):
    """The editor of one cell of a data editor (a canvas grid): click its first cell, walk there with the
    arrow keys, press Enter. On a loaded machine the grid can still be settling when first clicked,
    so the walk is tried again until the editor shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    editor = page.locator("input.gdg-input")
    for _ in range(attempts):
        wait_idle(page)
        canvas = grid.locator("canvas").first
        canvas.wait_for(timeout=TIMEOUT_MS)  # a page run that redraws the grid replaces its canvas for a moment
        box = canvas.bounding_box()
        if box is None:
            continue
        page.mouse.click(box["x"] + 20, box["y"] + 52)  # the first data row's first cell
        for _ in range(column - 1):
            page.keyboard.press("ArrowRight")
        for _ in range(row):
            page.keyboard.press("ArrowDown")
        page.keyboard.press("Enter")
        try:
            editor.wait_for(timeout=5_000)
            return editor
        except PlaywrightTimeout:
            page.keyboard.press("Escape")
    raise AssertionError(f"the editor of row {row}, column {column} did not open in {attempts} attempts")


def test_the_table_takes_an_exact_target(browser, cnn_server):
    context = browser.new_context(viewport=VIEWPORT)
    page = open_tune(context, cnn_server)
    open_tab(page, "Per-layer table")
    grid = page.locator("[data-testid=stDataFrame]").first
    grid.wait_for(timeout=TIMEOUT_MS)
    column = int(grid.locator("th[role=columnheader]", has_text="target (%)").get_attribute("aria-colindex"))
    editor = open_cell_editor(page, grid, column, row=1)  # features.1.0
    editor.fill("37")  # waits until the editor takes input; typed keys could land before it had focus
    editor.press("Enter")
    page.wait_for_function("() => location.search.includes('features.1.0%3A37')", timeout=TIMEOUT_MS)
    wait_idle(page)
    assert slider(page, "features.1.0").get_attribute("aria-valuetext") == "37%"
    context.close()


GRAPH_NODES = """() => { const graph = [...document.querySelectorAll('.js-plotly-plot')].find(plot =>
    ((plot.layout && plot.layout.title && plot.layout.title.text) || '').includes('Layers and how data flows'));
    return graph && graph.data ? graph.data[graph.data.length - 1].x.length : 0; }"""


def _graph_nodes(page) -> int:
    """Nodes drawn in the model graph (waits until plotly has drawn it)."""
    page.wait_for_function(GRAPH_NODES, timeout=TIMEOUT_MS)
    return page.evaluate(GRAPH_NODES)


@pytest.mark.slow
def test_the_graph_view_draws_digits_resnet_and_a_transformer_and_selects_a_layer(browser, tmp_path):
    for model, link, least in (("digits-resnet", "", 15), (VIT, f"?model={VIT}&shape=1,1,8,8", 3)):
        process, url = start_server(model, tmp_path / model.replace("/", "_"))
        try:
            context = browser.new_context(viewport=VIEWPORT)
            page = open_tune(context, url + "/" + link)
            assert page.locator("[data-testid=stException]").count() == 0
            open_tab(page, "Model graph")
            page.get_by_text("Arrows follow the data flow").wait_for(timeout=TIMEOUT_MS)
            assert _graph_nodes(page) >= least, model
            context.close()
        finally:
            stop_server(process)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a channel sweep and an allocation of digits-resnet: about 3 minutes on an idle machine
def test_a_goal_of_2x_fewer_macs_on_digits_resnet_gives_a_plan_that_meets_it(browser, tmp_path):
    process, url = start_server("digits-resnet", tmp_path / "home")
    try:
        context = browser.new_context(viewport=VIEWPORT)
        page = open_tune(context, url + "/?model=digits-resnet&granularity=channel&round_to=8")
        # said in the page, not only in a tooltip
        assert page.get_by_text("a sweep of this model with channel / l1").count() == 1
        page.get_by_role("button", name="Run the quick sweep").click()
        allocate = page.get_by_role("button", name="Auto-allocate")
        page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => "
                               "b.innerText.includes('Auto-allocate') && !b.disabled)", timeout=600_000)
        assert page.get_by_label("times fewer MACs").input_value() == "2.00"
        allocate.click()
        page.wait_for_function("() => location.search.includes('layers=')", timeout=300_000)
        wait_idle(page)
        page.locator(".st-key-tune-fresh").wait_for(timeout=TIMEOUT_MS)
        dense, pruned = re.findall(r"([\d.]+) M", strip_value(page, "Work per input"))
        assert float(dense) / float(pruned) >= 2.0 * 0.98, (dense, pruned)  # the strip rounds to 3 digits
        assert page.locator("[data-testid=stException]").count() == 0
        context.close()
    finally:
        stop_server(process)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_at_1280x800_keeps_its_text_whole_and_follows_the_colour_scheme(browser, cnn_server, scheme):
    folder = Path(tempfile.mkdtemp(prefix=f"prunelab-screens-{scheme}-"))
    context = browser.new_context(viewport=VIEWPORT, color_scheme=scheme)
    page = open_tune(context, cnn_server)
    release(page, "features.1.0", presses=6)
    for title in PAGES:
        page.get_by_role("link", name=title).first.click()
        page.wait_for_selector(f"h1:has-text('{title}')", timeout=TIMEOUT_MS)
        wait_idle(page)
        page.wait_for_timeout(400)  # charts finish drawing
        assert page.locator("[data-testid=stException]").count() == 0, title
        assert page.evaluate(CUT_TEXT) == [], title
        page.screenshot(path=str(folder / f"{title.lower()}.png"))
        red, green, blue = (int(value) for value in re.findall(r"\d+", page.evaluate(BACKGROUND))[:3])
        dark = (red + green + blue) / 3 < 128
        assert dark == (scheme == "dark"), (title, red, green, blue)
    print(f"\n{scheme} screenshots: {folder}")
    context.close()


@pytest.fixture(scope="module")
def staged_server(tmp_path_factory):
    """digits-cnn with no wait for the final figures: every plan change shows its stages."""
    process, url = start_server("digits-cnn", tmp_path_factory.mktemp("prunelab-home"), live_wait=0)
    yield url
    stop_server(process)


def test_the_previous_figures_are_marked_stale_while_a_plan_is_measured(browser, staged_server):
    context = browser.new_context(viewport=VIEWPORT)
    page = open_tune(context, staged_server)
    page.evaluate("""() => { window.sawStale = false;
        new MutationObserver(() => { if (document.querySelector('.st-key-tune-stale')) window.sawStale = true; })
          .observe(document.body, {childList: true, subtree: true, attributes: true, attributeFilter: ['class']}); }""")
    # A plan no other test measures on this shared server: a cached report would show at once, never stale.
    release(page, "fc1", presses=2, label="Weights removed")
    assert page.evaluate("window.sawStale")
    assert page.locator(".st-key-tune-stale").count() == 0  # gone once the new figures are in
    assert page.locator(READY).count() == 1
    context.close()
