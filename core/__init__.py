"""prunelab's engine: load, inspect, prune and measure PyTorch models. No user interface here."""
import os

# Idle OpenMP threads sleep instead of spinning (read once, when torch loads). On a busy 2-core
# machine spinning threads made a plan change to all metrics 3-4x slower (benchmarks/live_loop.py).
# A value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core.api import *  # noqa: F401,F403
from core.api import __all__  # noqa: F401
from core.errors import PrunelabError  # noqa: F401
