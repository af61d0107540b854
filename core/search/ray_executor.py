"""Jobs of a search as Ray tasks on an existing cluster (the ``ray`` extra).

The cluster needs no file of the user's: the packed state (model weights and architecture,
data) goes into Ray's object store once with ``ray.put`` and each worker process builds it on its
first job; prunelab's own code travels with the job (``runtime_env`` ``py_modules``), so nodes
need only Ray, torch and ONNX Runtime. Each task asks for one CPU and runs torch and ONNX
Runtime with one thread. A task whose worker dies is retried once by Ray (``max_retries=1``);
one lost twice is reported missing. The address is checked with a plain TCP connection first,
so a wrong address fails in seconds instead of after Ray's reconnection timeout.
"""
from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from core.errors import PrunelabError
from core.search.parallel import MAX_ATTEMPTS, POLL_SECONDS, OnResult, Outcome, Work, cached_state

CONNECT_SECONDS = 3.0
CPUS_PER_JOB = 1
DEFAULT_PORTS = {"ray": 10001, "": 6379}


def host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of a Ray address (``host:port`` or ``ray://host:port``); PrunelabError when unreadable."""
    parsed = urlparse(address if "://" in address else f"//{address}")
    try:
        port = parsed.port or DEFAULT_PORTS.get(parsed.scheme, 6379)
    except ValueError:
        raise PrunelabError(f"Ray address '{address}' must look like HOST:PORT or ray://HOST:PORT") from None
    if not parsed.hostname:
        raise PrunelabError(f"Ray address '{address}' must look like HOST:PORT or ray://HOST:PORT")
    return parsed.hostname, port


def check_address(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """Raise PrunelabError in one line when nothing accepts connections at ``address`` within ``seconds``."""
    if address == "auto":
        return
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=seconds):
            pass
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or str(error))
        raise PrunelabError(f"no Ray cluster answers at {address} ({reason})") from None


def connect(address: str):
    """The ``ray`` module connected to the cluster at ``address`` (reused while the address is the same)."""
    try:
        import ray
    except ImportError:
        raise PrunelabError("--ray-address needs Ray: pip install 'prunelab[ray]'") from None
    check_address(address)
    if ray.is_initialized():
        if _CONNECTED.get("address") == address:
            return ray
        ray.shutdown()
    import core

    package = str(Path(core.__file__).resolve().parent)
    # something may accept connections there without being Ray: give up after CONNECT_SECONDS
    # attempts instead of Ray's 20, and keep its per-attempt warnings off the terminal
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(int(CONNECT_SECONDS)))
    try:
        with _quiet_stderr():
            ray.init(address=address, runtime_env={"py_modules": [package], "excludes": ["__pycache__"]},
                     log_to_driver=False, logging_level="ERROR", configure_logging=False)
    except (ConnectionError, RuntimeError, TimeoutError) as error:
        raise PrunelabError(f"no Ray cluster answers at {address} ({str(error).splitlines()[0]})") from None
    _CONNECTED["address"] = address
    return ray


_CONNECTED: dict[str, str] = {}


@contextmanager
def _quiet_stderr():
    """Send what Ray's C++ core writes to stderr while joining a cluster to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _ray_job(key: str, build, run, payload_box: list, job, threads: int):
    """One job on a Ray worker: the state is built once per worker process from the object store."""
    import ray

    state = cached_state(key, build, _Lazy(ray, payload_box[0]), threads)
    return run(state, job), ray.get_runtime_context().get_node_id()


class _Lazy:
    """The payload fetched from the object store only when a worker first builds the state."""

    def __init__(self, ray, reference):
        self.ray, self.reference = ray, reference

    def __call__(self) -> bytes:
        return self.ray.get(self.reference)


class RayExecutor:
    """Jobs as Ray tasks on the cluster at ``address``; at most ``workers`` at once when given."""

    def __init__(self, address: str, workers: int | None = None):
        check_address(address)  # fails in seconds, before any model is loaded or swept
        self.address, self.workers = address, workers

    def describe(self) -> dict:
        return {"kind": "ray", "address": self.address, "workers": self.workers, "threads_per_worker": CPUS_PER_JOB}

    def map(self, work: Work, on_result: OnResult, should_stop: Callable[[], bool]) -> Outcome:
        ray = connect(self.address)
        outcome = Outcome(executor=self.describe())
        payload = work.pack()
        outcome.executor["payload_bytes"] = len(payload)
        reference = ray.put(payload)
        task = ray.remote(num_cpus=CPUS_PER_JOB, max_retries=MAX_ATTEMPTS - 1, retry_exceptions=False)(_ray_job)
        waiting = list(range(len(work.jobs)))
        running: dict = {}
        cluster = max(1, int(ray.cluster_resources().get("CPU", 1)) // CPUS_PER_JOB)
        limit = min(self.workers or cluster, cluster)  # never more tasks at once than the cluster has CPUs
        outcome.executor["workers"] = limit  # jobs at once
        names = _NodeNames(ray)
        try:
            while waiting or running:
                if should_stop():
                    outcome.stopped = True
                    break
                while waiting and len(running) < limit:
                    index = waiting.pop(0)
                    running[task.remote(work.key, work.build, work.run, [reference], work.jobs[index],
                                        CPUS_PER_JOB)] = index
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
                for finished in done:
                    self._collect(ray, finished, running.pop(finished), work, outcome, on_result, names)
        finally:
            for unfinished in running:
                ray.cancel(unfinished, force=True)
        outcome.missing.sort()
        return outcome

    @staticmethod
    def _collect(ray, finished, index: int, work: Work, outcome: Outcome, on_result: OnResult, names) -> None:
        try:
            value, node = ray.get(finished)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
                ray.exceptions.TaskCancelledError):
            outcome.missing.append(index)
            return
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, PrunelabError):
                raise PrunelabError(str(cause)) from None
            raise
        work.arrived(outcome, index, value, names(node))
        on_result(len(outcome.values), len(work.jobs), work.describe(work.jobs[index]))


class _NodeNames:
    """``node id -> "address (id prefix)"``, asking the cluster again only for a node not seen yet."""

    def __init__(self, ray):
        self.ray, self.addresses = ray, {}

    def __call__(self, node: str) -> str:
        if node not in self.addresses:
            self.addresses = {entry["NodeID"]: entry["NodeManagerAddress"] for entry in self.ray.nodes()}
        return f"{self.addresses.get(node, '?')} ({node[:8]})"

