"""``python -m core.cli``: the same as the ``prunelab`` command."""
from core.cli import run

run()
