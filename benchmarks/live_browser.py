"""The live loop as a person sees it: a slider release on the Tune page, timed in the system Chromium.

For each model a fresh ``prunelab dashboard`` server is started and the Tune page opened at a
plan (``--granularity``, all layers at ``--start`` percent). Then the "All layers" slider is moved
one 5% step at a time (each step a plan no one measured before) and two moments are read from
the page's own clock, counted from the key press:

- first: the cards show the new plan's measured latency and quality (its first stage, or its final
  figures when those come first): the "Weights removed" card has changed and nothing is marked stale;
- final: the cards show the new plan's final figures (the page's fresh view, no stage in progress).

Medians (and max) of ``--releases`` releases per model. Targets on 2 cores: first <= 2 s for minilm
and the ResNet-50 (224x224, transformers' ResNetConfig), final <= 10 s; digits-resnet final <= 1 s.
The final figures are ``prunelab evaluate``'s for the same plan (the dashboard measures as evaluate does).

    python -m benchmarks.live_browser [--quick] [--models minilm,resnet50,digits-resnet]
        [--granularity unstructured] [--releases 3]

``--quick`` times digits-resnet alone, with 2 releases.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import print_table

# name -> (dashboard arguments, first target s, final target s)
MODELS = {
    "minilm": (("minilm",), 2.0, 10.0),
    "resnet50": (("--input-shape", "1,3,224,224", "benchmarks.scale:resnet50"), 2.0, 10.0),
    "digits-resnet": (("digits-resnet",), None, 1.0),
}
START_PERCENT = 30
TIMEOUT_MS = 600_000  # a dense ResNet-50 baseline on a busy machine takes minutes

# The text of the "Weights removed" card, then a watcher that notes the page-clock time of the key press,
# of the first new figures (changed, nothing stale) and of the final ones (changed, the fresh view, no stage).
WATCH = """(before) => {
    const value = () => [...document.querySelectorAll('[data-testid=stMetric]')]
      .find(c => c.querySelector('[data-testid=stMetricLabel]')?.innerText.trim() === 'Weights removed')
      ?.querySelector('[data-testid=stMetricValue]')?.innerText;
    const times = window.__prunelabTimes = {pressed: null, first: null, final: null};
    document.addEventListener('keydown', () => { times.pressed ??= performance.now(); },
                              {capture: true, once: true});
    const check = () => {
      const now = value();
      if (times.pressed === null || now === undefined || now === before
          || document.querySelector('.st-key-tune-stale')) return;
      times.first ??= performance.now();
      if (document.querySelector('.st-key-tune-fresh') && !document.querySelector('.st-key-tune-live')) {
        times.final = performance.now();
        observer.disconnect();
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true,
                                     attributeFilter: ['class']});
  }"""
READY = "[data-testid=stApp][data-test-script-state=notRunning]"
FINAL = """() => document.querySelector('.st-key-tune-fresh') !== null
    && document.querySelector('.st-key-tune-live, .st-key-tune-stale') === null"""
ALL_LAYERS = '[data-testid="stSlider"] input[type=range][aria-label="All layers"]'


def _weights_removed(page) -> str:
    card = page.locator("[data-testid=stMetric]").filter(
        has=page.locator("[data-testid=stMetricLabel]", has_text="Weights removed")).first
    return card.locator("[data-testid=stMetricValue]").inner_text(timeout=TIMEOUT_MS)


def _settled(page) -> None:
    page.wait_for_function(FINAL, timeout=TIMEOUT_MS, polling=250)
    page.wait_for_selector(READY, timeout=TIMEOUT_MS)
    page.wait_for_function(FINAL, timeout=TIMEOUT_MS, polling=250)


def release(page) -> tuple[float, float]:
    """One ArrowRight on the "All layers" slider: seconds to the first new figures and to the final ones."""
    page.evaluate(WATCH, _weights_removed(page))
    handle = page.locator(ALL_LAYERS)
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function("window.__prunelabTimes.final !== null", polling=250, timeout=TIMEOUT_MS)
    times = page.evaluate("window.__prunelabTimes")
    _settled(page)
    return (times["first"] - times["pressed"]) / 1000.0, (times["final"] - times["pressed"]) / 1000.0


def time_model(name: str, granularity: str, releases: int) -> dict:
    """A fresh server for ``name``; the Tune page opened at START_PERCENT; ``releases`` timed slider steps."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import VIEWPORT, launch, start_server, stop_server

    arguments, first_target, final_target = MODELS[name]
    process, url = start_server(arguments[-1], Path(tempfile.mkdtemp(prefix="prunelab-home-")),
                                options=arguments[:-1])
    try:
        with sync_playwright() as playwright:
            chromium = launch(playwright)
            page = chromium.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{url}/?granularity={granularity}&sparsity={START_PERCENT}", timeout=TIMEOUT_MS)
            page.locator(ALL_LAYERS).wait_for(timeout=TIMEOUT_MS)
            _settled(page)
            timed = [release(page) for _ in range(releases)]
            chromium.close()
    finally:
        stop_server(process)
    firsts, finals = [first for first, _ in timed], [final for _, final in timed]
    return {"model": name, "granularity": granularity, "first_s": statistics.median(firsts),
            "first_max_s": max(firsts), "final_s": statistics.median(finals), "final_max_s": max(finals),
            "first_target": first_target, "final_target": final_target}


def main(quick: bool = False, models: list[str] | None = None, granularity: str = "unstructured",
         releases: int = 3) -> list[dict]:
    names = models or (["digits-resnet"] if quick else list(MODELS))
    releases = min(releases, 2) if quick else releases
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = [time_model(name, granularity, releases) for name in names]
    print(f"Slider release on the Tune page -> first measured figures and -> final figures, in Chromium "
          f"({granularity}, all layers from {START_PERCENT}% up one 5% step per release); {releases} releases per "
          f"model, medians (max). Load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after on "
          f"{os.cpu_count()} cores; {time.perf_counter() - started:.0f} s in all.\n")
    print_table(["model", "granularity", "first s", "first max s", "final s", "final max s", "target first s",
                 "target final s"],
                [[row["model"], row["granularity"], row["first_s"], row["first_max_s"], row["final_s"],
                  row["final_max_s"], "-" if row["first_target"] is None else row["first_target"],
                  row["final_target"]] for row in rows])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--granularity", default="unstructured", choices=("unstructured", "channel"))
    parser.add_argument("--releases", type=int, default=3)
    options = parser.parse_args()
    main(options.quick, options.models.split(",") if options.models else None, options.granularity,
         options.releases)
