"""Measure a grid of plans (sparsity levels x criteria x granularities ...) and keep each as a run.

Every plan of the grid is one job (core.search.parallel): applied to the model, exported and
measured on ONNX Runtime by ``evaluate`` in whichever process runs it, with that process's ORT
threads. The calling process records each report in the run store as it arrives, so the
History page's Pareto chart of the model fills in with one command and a stop (Ctrl-C, the
dashboard's Stop) loses no plan already measured. Combinations a plan refuses (a criterion that
does not apply to a granularity) are skipped and named. A grid is bounded: its product is
checked against ``plan_limit()`` (PRUNELAB_MAX_PLANS, or ``max_plans``) before a plan is built.
"""
from __future__ import annotations

import itertools
import math
import pickle
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from core.errors import PrunelabError
from core.limits import PLANS_VARIABLE, plan_limit
from core.prune.plan import AUTO, Plan
from core.search.executors import executor_for
from core.search.parallel import Outcome, Work, pack_object
from core.sources import ModelHandle

DEFAULT_GRID = "sparsity=0.3,0.5,0.7,0.9;criterion=l1,l2,taylor;granularity=unstructured,channel;scope=global"
def int_or_auto(text: str) -> int | str:
    """A grid's round_to value: 'auto' or a whole number (ValueError otherwise; the name is the error's)."""
    return AUTO if text == AUTO else int(text)


GRID_KEYS = {"sparsity": float, "criterion": str, "granularity": str, "scope": str, "round_to": int_or_auto}
SERIAL_THREADS = 2   # ORT threads when the grid runs in this process (evaluate's default)


def parse_grid(text: str) -> dict[str, list]:
    """Read ``"sparsity=0.5,0.9;criterion=l1,l2"`` into ``{"sparsity": [0.5, 0.9], "criterion": ["l1", "l2"]}``.

    Keys: sparsity, criterion, granularity, scope, round_to. Raises PrunelabError naming an
    unknown key, an empty list or a value of the wrong type.
    """
    grid: dict[str, list] = {}
    for part in str(text).split(";"):
        if not part.strip():
            continue
        key, equals, values = part.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or key not in GRID_KEYS:
            raise PrunelabError(f"grid part '{part.strip()}' must be KEY=V1,V2 with KEY one of "
                                f"{', '.join(GRID_KEYS)}")
        items = [value.strip() for value in values.split(",") if value.strip()]
        if not items:
            raise PrunelabError(f"grid key '{key}' has no values")
        try:
            grid[key] = [GRID_KEYS[key](value) for value in items]
        except ValueError:
            kind = GRID_KEYS[key].__name__
            raise PrunelabError(f"grid key '{key}' takes {kind} values, got '{values.strip()}'") from None
    if not grid:
        raise PrunelabError("the grid is empty: give at least one KEY=V1,V2")
    return grid


def check_grid_size(grid: dict[str, list], max_plans: int | None = None) -> int:
    """The number of plans of ``grid`` (its product); PrunelabError above ``max_plans`` (default plan_limit())."""
    limit = plan_limit() if max_plans is None else int(max_plans)
    count = math.prod(len(values) for values in grid.values())
    if count > limit:
        sizes = " x ".join(f"{len(values)} {key}" for key, values in grid.items())
        raise PrunelabError(f"the grid has {count:,} plans ({sizes}); the limit is {limit:,}: pass --max-plans "
                            f"{count} (or set {PLANS_VARIABLE}) to measure them all")
    return count


def grid_plans(grid: dict[str, list]) -> tuple[list[Plan], list[str]]:
    """Every valid plan of ``grid`` (its product, in order) and a line for each combination refused."""
    keys = list(grid)
    plans, skipped = [], []
    for values in itertools.product(*(grid[key] for key in keys)):
        settings = dict(zip(keys, values))
        try:
            plans.append(Plan(**settings))
        except PrunelabError as error:
            skipped.append(f"{plan_name(settings)}: {error}")
    return plans, skipped


def plan_name(settings: dict) -> str:
    """A short label such as ``channel l1 global 50%``."""
    words = [str(settings.get("granularity", "unstructured")), str(settings.get("criterion", "l1")),
             str(settings.get("scope", "layer")), f"{float(settings.get('sparsity', 0.0)):.0%}"]
    if settings.get("round_to", AUTO) not in (AUTO, 1):
        words.append(f"round {settings['round_to']}")
    return " ".join(words)


class _GridState:
    def __init__(self, handle: ModelHandle, threads: int):
        self.handle, self.threads = handle, threads


def _build(payload: bytes, threads: int) -> _GridState:
    return _GridState(pickle.loads(payload), threads)


def _measure(state: _GridState, plan: dict) -> dict:
    from core.deploy.evaluate import evaluate

    return evaluate(state.handle, Plan.from_dict(plan), threads=state.threads)


def explore(handle: ModelHandle, grid: str | dict = DEFAULT_GRID, workers: int | None = 1,
            ray_address: str | None = None, progress: Callable[[int, int, str], None] | None = None,
            should_stop: Callable[[], bool] | None = None, label: str = "explore",
            max_plans: int | None = None) -> dict:
    """Measure every plan of ``grid`` (a grid string, see parse_grid, or its dict) and record each as a run.

    workers / ray_address: where the plans are measured (see core.search.executors.executor_for);
    each process times ONNX Runtime with its own threads (``settings.threads`` of each report;
    SERIAL_THREADS in this process). progress: ``progress(done, total, text)`` per plan.
    max_plans: the most plans the grid may hold (default ``plan_limit()``).
    Each plan is recorded as it is measured; Ctrl-C (KeyboardInterrupt) or ``should_stop`` ends the
    search with ``stopped`` true and the plans measured so far kept.
    Returns ``{"runs": [run ids], "plans", "measured", "missing", "stopped", "skipped", "nodes", "seconds"}``.
    Raises PrunelabError for a bad grid, a grid over the limit or a grid without a single valid plan.
    """
    started = time.perf_counter()
    grid = parse_grid(grid) if isinstance(grid, str) else grid
    check_grid_size(grid, max_plans)
    plans, skipped = grid_plans(grid)
    if not plans:
        raise PrunelabError(f"no plan of the grid is valid: {skipped[0] if skipped else 'empty grid'}")
    executor = executor_for(workers, ray_address)
    recorder = _Recorder(handle, plans, label)
    work = Work([plan.to_dict() for plan in plans], prepare=lambda: _GridState(handle, SERIAL_THREADS),
                pack=lambda: pack_object(handle), build=_build, run=_measure, describe=plan_name,
                on_value=recorder)
    try:
        outcome = executor.map(work, progress or (lambda done, total, text: None), should_stop or (lambda: False))
    except KeyboardInterrupt:  # every plan measured so far is already a run
        outcome = Outcome(stopped=True, executor=executor.describe())
    runs = [recorder.runs[index] for index in sorted(recorder.runs)]
    return {"runs": runs, "plans": len(plans), "measured": len(runs),
            "missing": [plan_name(plans[index].to_dict()) for index in outcome.missing],
            "stopped": outcome.stopped, "skipped": skipped, "nodes": sorted(set(recorder.nodes)),
            "executor": outcome.executor, "seconds": round(time.perf_counter() - started, 3)}


class _Recorder:
    """Records each measured plan as a run the moment its report arrives (``Work.on_value``)."""

    def __init__(self, handle: ModelHandle, plans: list[Plan], label: str):
        from core.history.runs import RunStore

        self.handle, self.plans, self.label = handle, plans, label
        self.store, self.runs, self.nodes = RunStore(), {}, []

    def __call__(self, index: int, report: dict, node: str) -> None:
        plan = self.plans[index]
        with _interrupts_held():  # a Ctrl-C lands after the run is both stored and counted
            run = self.store.record(dict(report, measured_on=node), model=self.handle, plan=plan,
                                    label=f"{self.label}: {plan_name(plan.to_dict())}")
            self.runs[index] = run.id
            self.nodes.append(node)


@contextmanager
def _interrupts_held():
    """Defer Ctrl-C while the block runs (main thread only: elsewhere there is no Ctrl-C to defer).

    A SIGINT that arrives meanwhile is raised as KeyboardInterrupt right after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: pressed.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt
