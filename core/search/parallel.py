"""Run many independent measurement jobs serially, on local processes, or on a Ray cluster.

A ``Work`` describes the jobs of one search (a sensitivity sweep, a grid of plans, allocation's
candidates): ``prepare()`` builds the state that every job reads (the model, the scorer, ...) in
this process, ``pack()`` turns everything that state needs into bytes that travel to another
process or machine, ``build(payload, threads)`` rebuilds the state there, and ``run(state, job)``
measures one job. ``build`` and ``run`` are module-level functions, so they travel by name. ``on_value(index,
value, node)``, when given, is called in this process as each job's value arrives, so a caller
can keep every finished job (explore records each plan as a run) before the search ends.

Every executor returns an ``Outcome`` with the same values for the same jobs: workers build
their state from the same bytes and the same seeds, so a parallel sweep equals the serial one
point for point. Results come back to the calling process, which alone writes caches and runs.
A worker process that dies loses only the jobs it was running: they are retried once on a new
worker, and a job lost twice is reported in ``Outcome.missing`` rather than waited for.
Ctrl-C or ``should_stop`` ends every worker this process started.
"""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

ADDRESS_VARIABLE = "PRUNELAB_RAY_ADDRESS"
POLL_SECONDS = 0.2
MAX_ATTEMPTS = 2   # a job lost with its worker is tried once more


@dataclass
class Work:
    """The jobs of one search and how to build the state they read (see the module docstring)."""

    jobs: list
    prepare: Callable[[], Any]
    pack: Callable[[], bytes]
    build: Callable[[bytes, int], Any]
    run: Callable[[Any, Any], Any]
    describe: Callable[[Any], str] = str
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    on_value: Callable[[int, Any, str], None] | None = None

    def arrived(self, outcome: Outcome, index: int, value, node: str) -> None:
        """Keep job ``index``'s value in ``outcome`` and hand it to ``on_value`` at once."""
        outcome.values[index], outcome.nodes[index] = value, node
        if self.on_value is not None:
            self.on_value(index, value, node)


@dataclass
class Outcome:
    """Values by job index, the machine that measured each, jobs lost twice, and whether it was stopped."""

    values: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)
    missing: list = field(default_factory=list)
    stopped: bool = False
    executor: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.stopped


OnResult = Callable[[int, int, str], None]   # (done, total, text), as the sensitivity progress


def node_name() -> str:
    """The machine a measurement ran on, as results name it."""
    return socket.gethostname()


def pack_object(value) -> bytes:
    """Pickle ``value`` so that code from a user's model file travels with it (cloudpickle by value)."""
    import cloudpickle

    for name, module in list(sys.modules.items()):
        if name.startswith("prunelab_user_") and module is not None:  # see core.sources.load._import
            cloudpickle.register_pickle_by_value(module)
    return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def default_workers() -> int:
    """The machine's cores (what ``--workers`` means when it is not given, and the most it may ask for)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class SerialExecutor:
    """Every job in this process, in order: today's serial path."""

    def describe(self) -> dict:
        return {"kind": "serial", "workers": 1}

    def map(self, work: Work, on_result: OnResult, should_stop: Callable[[], bool]) -> Outcome:
        outcome = Outcome(executor=self.describe())
        state = work.prepare()
        node = node_name()
        for index, job in enumerate(work.jobs):
            if should_stop():
                outcome.stopped = True
                break
            work.arrived(outcome, index, work.run(state, job), node)
            on_result(len(outcome.values), len(work.jobs), work.describe(job))
        return outcome


# --- local worker processes -------------------------------------------------------------------

_STATES: dict[str, Any] = {}
_PAYLOADS: dict[str, tuple] = {}


def _enter(key: str, build, payload: bytes, threads: int, ledger: str) -> None:
    """Process-pool initializer: Ctrl-C is the parent's to handle; remember how to build the state."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _PAYLOADS[key] = (build, payload, threads, ledger)


def cached_state(key: str, build, payload, threads: int):
    """The state of work ``key`` in this process, built on its first job (torch threads set to ``threads``).

    payload: the packed bytes, or a function that fetches them (called only when building).
    """
    if key not in _STATES:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        _STATES.clear()  # one search at a time per worker process
        _STATES[key] = build(payload() if callable(payload) else payload, threads)
    return _STATES[key]


def _pool_job(key: str, run, index: int, job):
    """One job in a pool process; the ledger file named after this process says which job it runs."""
    build, payload, threads, ledger = _PAYLOADS[key]
    entry = os.path.join(ledger, str(os.getpid()))
    with open(entry, "w") as stream:
        stream.write(str(index))
    value = run(cached_state(key, build, payload, threads), job)
    os.unlink(entry)
    return value, node_name()


class PoolExecutor:
    """Jobs spread over ``workers`` fresh (spawned) processes on this machine."""

    def __init__(self, workers: int):
        self.workers = int(workers)
        self.threads = max(1, default_workers() // self.workers)

    def describe(self) -> dict:
        return {"kind": "processes", "workers": self.workers, "threads_per_worker": self.threads}

    def map(self, work: Work, on_result: OnResult, should_stop: Callable[[], bool]) -> Outcome:
        outcome = Outcome(executor=self.describe())
        payload = work.pack()
        outcome.executor["payload_bytes"] = len(payload)
        attempts = {index: 0 for index in range(len(work.jobs))}
        while not outcome.stopped and len(outcome.values) + len(outcome.missing) < len(work.jobs):
            pending = [index for index in attempts if index not in outcome.values and index not in outcome.missing]
            lost = self._round(work, payload, pending, outcome, on_result, should_stop)
            for index in lost:
                attempts[index] += 1
                if attempts[index] >= MAX_ATTEMPTS:
                    outcome.missing.append(index)
        outcome.missing.sort()
        return outcome

    def _round(self, work: Work, payload: bytes, pending: list[int], outcome: Outcome, on_result: OnResult,
               should_stop) -> list[int]:
        """Run ``pending`` jobs on one pool; returns the jobs lost with a worker that died (none if none did)."""
        ledger = tempfile.mkdtemp(prefix="prunelab-jobs-")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(pending)), mp_context=get_context("spawn"),
                                   initializer=_enter, initargs=(work.key, work.build, payload, self.threads, ledger))
        try:
            with _main_not_imported():  # the pool starts its processes on the first submissions
                futures = {pool.submit(_pool_job, work.key, work.run, index, work.jobs[index]): index
                           for index in pending}
            processes = list(pool._processes.values())
            while futures:
                if should_stop():
                    outcome.stopped = True
                    return []
                done, _ = wait(futures, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    index = futures.pop(future)
                    try:
                        value, node = future.result()
                    except BrokenProcessPool:
                        broken = True
                        continue
                    work.arrived(outcome, index, value, node)
                    on_result(len(outcome.values), len(work.jobs), work.describe(work.jobs[index]))
                if broken:
                    return _lost_jobs(processes, ledger, [index for index in pending if index not in outcome.values])
            return []
        finally:
            _end_pool(pool)
            shutil.rmtree(ledger, ignore_errors=True)


def _lost_jobs(processes: list, ledger: str, unfinished: list[int]) -> list[int]:
    """The jobs that processes which died on their own (not stopped by the pool) were running.

    When none can be named (a worker stopped from outside with SIGTERM looks like the pool's own
    shutdown), every unfinished job counts as lost once.
    """
    lost = []
    for process in processes:
        process.join(1.0)
        if process.exitcode in (None, 0, -signal.SIGTERM):
            continue
        try:
            with open(os.path.join(ledger, str(process.pid))) as stream:
                lost.append(int(stream.read()))
        except (OSError, ValueError):
            continue
    return sorted(set(lost) & set(unfinished)) or unfinished


_MAIN_LOCK = threading.Lock()


@contextmanager
def _main_not_imported():
    """Start processes without importing the caller's main script in them.

    multiprocessing's spawn runs the parent's ``__main__`` again in each child, which starts the
    work again in a script without an ``if __name__ == "__main__"`` guard. Jobs only need
    prunelab's modules (the model travels pickled, by value when it is defined in ``__main__``),
    so the children start from a blank main module instead.
    """
    with _MAIN_LOCK:
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


def _end_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool at once (no waiting for running jobs) and reap its processes: no orphans."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 5.0
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(1.0)
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:  # its workers are gone, so it ends; joined here, not in the exit handler
        manager.join(5.0)
