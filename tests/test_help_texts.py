"""Every ``--help`` can be printed: argparse formats each help text with ``%`` (``%(default)s``), so a bare
``50%`` in one made ``python -m benchmarks.oneshot --help`` end in a TypeError. Read from the sources with ast,
so no command (and no torch) has to start."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("core/cli/*.py"), *ROOT.glob("dashboard/*.py")])


def help_texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every constant ``help=`` given to an ``add_argument`` call in ``path``."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            for keyword in node.keywords:
                if keyword.arg == "help" and isinstance(keyword.value, ast.Constant) \
                        and isinstance(keyword.value.value, str):
                    texts.append((node.lineno, keyword.value.value))
    return texts


PARAMS = {"default": None, "prog": "prunelab", "choices": "", "metavar": "", "dest": "", "type": "", "nargs": ""}


def format_error(text: str) -> str | None:
    """Why argparse could not format ``text`` (it applies ``%`` with a dict of the argument's fields), or None."""
    try:
        text % PARAMS  # noqa: B018, UP031 -- what argparse does with a help text
    except (TypeError, ValueError, KeyError) as error:
        return str(error)
    return None


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_help_text_formats_as_argparse_formats_it(path):
    for line, text in help_texts(path):
        error = format_error(text)
        assert error is None, f"{path.name}:{line}: {text!r} cannot be formatted ({error}); write % as %%"


def test_the_check_sees_a_bare_percent():
    assert format_error("50% only") and format_error("50%% only, default %(default)s") is None
