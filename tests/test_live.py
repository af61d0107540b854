"""The Tune page's live job: how long a page run waits for a plan's final figures before it shows stages."""
from __future__ import annotations

import threading
import time

from dashboard import live


class Clock:
    """A monotonic clock the test moves: the measurement's own pace, whatever the machine's load."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def _stage(items: int, of: int, final: bool) -> dict:
    return {"pruned": {"progress": {"items": items, "of": of, "final": final}}}


def _job(clock: Clock, first_items: int, release: threading.Event) -> live.LiveJob:
    """A job whose first stage scores ``first_items`` of 100 items one clock second in, then waits for
    ``release`` before its final stage."""
    def stages(cancelled):
        clock.now = 1.0
        yield _stage(first_items, 100, False)
        release.wait(60)
        yield _stage(100, 100, True)

    return live.LiveJob({"plan": first_items}, stages, threading.RLock())


def test_a_slow_plan_shows_its_first_stage_without_waiting_out_the_wait(monkeypatch):
    clock, release = Clock(), threading.Event()
    monkeypatch.setattr(live, "time", clock)
    job = _job(clock, 2, release)  # 2 of 100 items in a second: the final figures are about 50 s away
    started = time.perf_counter()
    job.wait_shown(30.0)
    assert job.latest is not None and not job.final and time.perf_counter() - started < 20
    job.cancel()
    release.set()


def test_a_fast_plan_waits_for_its_final_figures(monkeypatch):
    clock, release = Clock(), threading.Event()
    monkeypatch.setattr(live, "time", clock)
    job = _job(clock, 80, release)  # 80 of 100 items in a second: the final figures are due within the wait
    timer = threading.Timer(0.3, release.set)  # the rest of the measurement
    timer.start()
    job.wait_shown(30.0)
    assert job.final
    timer.cancel()
