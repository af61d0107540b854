"""Choosing where many independent jobs run: this process, local worker processes or a Ray cluster.

The executors live in core.search.parallel (serial and process pool) and core.search.ray_executor;
this module picks one, so neither of them needs to know the other.
"""
from __future__ import annotations

import os

from core.errors import PrunelabError
from core.search.parallel import ADDRESS_VARIABLE, PoolExecutor, SerialExecutor, default_workers


def executor_for(workers: int | None = 1, ray_address: str | None = None):
    """The executor for a ``workers`` count (None: the machine's cores) or a Ray cluster address.

    ray_address (or the PRUNELAB_RAY_ADDRESS variable when None) wins over workers; on a cluster, a
    count above 1 bounds how many jobs run at once, and 1 or None (the defaults of the API and the
    CLI) mean as many as the cluster has CPUs: "this process only" has no meaning there. A count
    is capped at the machine's cores (``capped_workers``), or on a cluster at its CPUs.
    Raises PrunelabError for a count below 1 or an address that does not answer.
    """
    address = ray_address if ray_address is not None else os.environ.get(ADDRESS_VARIABLE) or None
    if workers is not None and int(workers) < 1:
        raise PrunelabError(f"workers must be at least 1, got {workers}")
    if address:
        from core.search.ray_executor import RayExecutor  # ray is an optional extra
        return RayExecutor(address, None if workers is None or int(workers) == 1 else int(workers))
    workers = capped_workers(workers)
    return SerialExecutor() if workers == 1 else PoolExecutor(workers)


def capped_workers(workers: int | None) -> int:
    """Local worker processes for a requested count: the machine's cores when None, never more than them."""
    return default_workers() if workers is None else max(1, min(int(workers), default_workers()))
