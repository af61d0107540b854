"""A budget in time and memory for work that may never end, such as tracing the channel couplings
of an arbitrary model (torch-pruning's index propagation can loop on strided slices).

``within(seconds, extra_bytes)`` runs a block under a watchdog thread that raises ``OverBudget`` in
the calling thread once the block has run ``seconds`` or grown the process by ``extra_bytes``. The
exception arrives between Python bytecodes, so it stops pure-Python loops, not a single long
native call.
"""
from __future__ import annotations

import ctypes
import os
import threading
import time
from contextlib import contextmanager

POLL_SECONDS = 0.05
REPEAT_SECONDS = 0.5
REPEATS = 20


class OverBudget(BaseException):
    """Raised inside a ``within`` block past its budget (a BaseException, so ``except Exception`` in
    the traced code does not swallow it)."""


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _interrupt(thread_id: int, exception) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exception) if exception else None)


@contextmanager
def within(seconds: float, extra_bytes: int):
    """Run the block; raise OverBudget in it past ``seconds`` or ``extra_bytes`` of new resident memory.

    Yields a list that holds, once the budget is exceeded, what ran out ("45 s" or "2.0 GB").
    """
    target, start = threading.get_ident(), resident_bytes()
    deadline, done, spent = time.monotonic() + seconds, threading.Event(), []

    def watch():
        while not done.wait(POLL_SECONDS):
            if time.monotonic() > deadline:
                spent.append(f"{seconds:g} s")
            elif start and resident_bytes() - start > extra_bytes:
                spent.append(f"{extra_bytes / 2**30:.1f} GB of memory")
            else:
                continue
            break
        else:
            return  # the block ended within its budget
        for _ in range(REPEATS):  # again every REPEAT_SECONDS: traced code may swallow one interruption
            _interrupt(target, OverBudget)
            if done.wait(REPEAT_SECONDS):
                return

    watcher = threading.Thread(target=watch, name="prunelab-budget", daemon=True)
    watcher.start()
    try:
        yield spent
    finally:
        while True:
            try:
                done.set()
                watcher.join()
                if spent:
                    _interrupt(target, None)  # clear an interruption that had not arrived yet
                break
            except OverBudget:  # a repeat that arrived while the block was already ending
                continue
