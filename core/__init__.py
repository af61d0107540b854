"""prunelab's engine: load, inspect, prune and measure PyTorch models. No user interface here."""
from core.api import *  # noqa: F401,F403
from core.api import __all__  # noqa: F401
from core.errors import PrunelabError  # noqa: F401
