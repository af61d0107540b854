"""prunelab's engine: load, inspect, prune and measure PyTorch models. No user interface here.

``import core`` is cheap: the names of ``core.api`` (the front door) load on first use, so
``import core.errors`` or ``prunelab --help`` does not pull in torch.
"""
import importlib
import os

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads). On a busy 2-core
# machine spinning threads made a plan change to all metrics 3-4x slower (benchmarks/live_loop.py).
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core.errors import PrunelabError as PrunelabError  # noqa: E402 (the one error type, without torch)


def __getattr__(name: str):
    """``core.<name>`` for every name of ``core.api``, imported on first use (PEP 562)."""
    api = importlib.import_module("core.api")
    if name == "__all__" or name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(importlib.import_module("core.api").__all__))
