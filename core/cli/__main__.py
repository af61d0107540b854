"""``python -m core.cli``: the same as the ``prunelab`` command."""
from core.cli import run

if __name__ == "__main__":  # not when a spawned worker process imports this module as its main
    run()
