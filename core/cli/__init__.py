"""The ``prunelab`` command: a thin layer over the engine, one module per subcommand.

Every module in this package that defines ``register(subparsers)`` is a subcommand: it adds
its parser and sets ``func`` to a function taking the parsed arguments and returning an exit
code. ORDER puts the common ones first in ``--help``; the rest follow by name.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from core.errors import PrunelabError

ORDER = ["models", "inspect", "evaluate", "prune", "sensitivity", "allocate", "runs", "report", "dashboard"]


def command_modules() -> list[str]:
    found = {info.name for info in pkgutil.iter_modules(__path__) if info.name not in ("options", "__main__")}
    return [name for name in ORDER if name in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunelab",
                                     description="Prune PyTorch models and measure them on ONNX Runtime.")
    parser.add_argument("--debug", action="store_true", help="show a traceback on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in command_modules():
        module = importlib.import_module(f"core.cli.{name}")
        if hasattr(module, "register"):
            module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PrunelabError as error:
        if args.debug:
            raise
        print(f"prunelab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunelab: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`prunelab runs --json | head`): stop quietly, and keep Python's
        # final flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, MemoryError, RecursionError) as error:  # a fault outside prunelab's checks: one line
        if args.debug:
            raise
        print(f"prunelab: error: {fault(error)}", file=sys.stderr)
        return 2


def fault(error: BaseException) -> str:
    """One line for an error from the system rather than from the person's input."""
    if isinstance(error, MemoryError):
        return "out of memory (a smaller --input-shape, --batch-size or data file needs less)"
    if isinstance(error, RecursionError):
        return "input nested too deeply to read"
    name = getattr(error, "filename", None)
    text = getattr(error, "strerror", None) or str(error) or error.__class__.__name__
    home = os.environ.get("PRUNELAB_HOME")
    hint = f" (PRUNELAB_HOME is {home})" if home and name and str(name).startswith(home) else ""
    return f"{text}: {name}{hint}" if name else text


def run() -> None:
    sys.exit(main())
