"""Depth pruning on the Tune page, in the system Chromium: a switch per removable block, the strip counting
blocks, the link carrying them and the graph drawing a removed block as removed."""
from __future__ import annotations

import pytest

from tests.test_browser import CHROMIUM, READY, VIEWPORT, start_server, stop_server

TIMEOUT_MS = 180_000  # digits-resnet's first measurement and block influence, on a shared 2-core machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="the system Chromium (/usr/bin/chromium) is not installed"),
]

STRIP_BLOCKS = """() => [...document.querySelectorAll('.st-key-tune-fresh [data-testid=stColumn]')]
    .find(column => column.innerText.includes('Blocks'))?.querySelector('strong:last-of-type')?.innerText"""
REMOVED_LABELS = """() => { const graph = [...document.querySelectorAll('.js-plotly-plot')].find(plot =>
    plot.data && plot.data.some(trace => trace.customdata));
    return graph ? graph.data[graph.data.length - 1].text.filter(text => text.endsWith('(removed)')) : null; }"""


@pytest.fixture(scope="module")
def resnet_server(tmp_path_factory):
    process, url = start_server("digits-resnet", tmp_path_factory.mktemp("prunelab-home"))
    yield url
    stop_server(process)


def test_switching_a_block_off_removes_it_and_the_strip_and_graph_say_so(browser, resnet_server):
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(resnet_server)
        page.locator("[data-testid=stMetricValue]").first.wait_for(timeout=TIMEOUT_MS)
        page.wait_for_function(f"() => ({STRIP_BLOCKS})() === '3 → 3'", timeout=TIMEOUT_MS)
        page.locator("[data-testid=stExpander] summary", has_text="Blocks: 3 of 3 kept").click()
        switch = page.locator("[data-testid=stCheckbox]", has_text="layer1 · influence")
        switch.wait_for(timeout=TIMEOUT_MS)
        switch.locator("label").first.click()
        page.wait_for_function(f"() => ({STRIP_BLOCKS})() === '3 → 2'", timeout=TIMEOUT_MS)
        page.wait_for_function("() => new URLSearchParams(location.search).get('drop') === 'layer1'",
                               timeout=TIMEOUT_MS)
        page.wait_for_selector(READY, timeout=TIMEOUT_MS)
        assert page.get_by_text("layer1.conv1 removed with its block").count() == 1  # no slider for it
        page.locator("[data-testid=stButtonGroup] button", has_text="Model graph").first.click()
        page.wait_for_function(f"() => ({REMOVED_LABELS})()?.length > 0", timeout=TIMEOUT_MS)
        assert sorted(page.evaluate(REMOVED_LABELS)) == ["layer1.conv1 (removed)", "layer1.conv2 (removed)"]
    except Exception:
        page.screenshot(path="/tmp/depth-browser-failure.png", full_page=True)
        raise
    finally:
        context.close()
