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


def test_a_poll_draws_a_stage_that_comes_while_it_waits():
    release = threading.Event()

    def stages(cancelled):
        release.wait(60)
        yield _stage(10, 100, False)
        release.wait(60)  # set already: the next stage follows at once, then nothing new until the end
        yield _stage(20, 100, False)
        threading.Event().wait(0.5)
        yield _stage(100, 100, True)

    job = live.LiveJob({"plan": 1}, stages, threading.RLock())
    threading.Timer(0.2, release.set).start()
    started = time.perf_counter()
    job.wait_newer(30.0)  # returns with the first stage, not after the 30 s
    assert job.latest is not None and time.perf_counter() - started < 20
    job.wait_final(30.0)
    job.shown = job.published
    assert job.published == 3
    job.wait_newer(0.05)  # nothing newer will come: it waits out its time and returns
    assert job.published == job.shown and job.done
