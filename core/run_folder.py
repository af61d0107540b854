"""A folder that holds one run's files: claimed while empty, filled in a staging folder, published whole.

An earlier run's files are never replaced: ``claim`` refuses a folder with anything in it, and
``publish`` moves files in without replacing any (a missing folder is created by renaming the
staging folder onto it in one step). Staging folders carry the writer's process id
(``.NAME.prune-PID-*`` beside a new folder, ``.prune-PID-*`` inside an empty one), so those of
killed writers are recognised and removed by the next ``claim``.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from core.errors import PrunelabError


def claim(out: Path) -> None:
    """Refuse ``out`` when it is a file or a folder with anything in it; remove stale staging first."""
    _remove_stale(out.parent.glob(f".{out.name}.prune-*"), f".{out.name}.prune-")
    if out.exists() and not out.is_dir():
        raise PrunelabError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        _remove_stale(out.glob(".prune-*"), ".prune-")
        entries = sorted(entry.name for entry in out.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise PrunelabError(f"--out {out} already holds files ({shown}); prunelab never replaces an earlier "
                                f"run's files: choose a new folder")


def staging(out: Path) -> Path:
    """A new private staging folder for ``out``: inside it when it exists (empty), else beside it."""
    tag = f"prune-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if out.is_dir():
        folder = out / f".{tag}"
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        folder = out.parent / f".{out.name}.{tag}"
    folder.mkdir()
    return folder


def publish(folder: Path, out: Path, names: list[str]) -> None:
    """Move ``names`` from the staging ``folder`` into ``out`` without replacing anything, then drop ``folder``.

    Raises PrunelabError, leaving ``out`` as it was, when another writer put files there meanwhile.
    """
    if folder.parent != out:
        try:
            os.rename(folder, out)  # one step; succeeds only onto a missing or empty folder
        except OSError:
            raise PrunelabError(f"--out {out} gained files while pruning; this run's files were not written") from None
        return
    linked = []
    try:
        for name in names:
            _move_without_replacing(folder / name, out / name)
            linked.append(out / name)
    except FileExistsError:
        for path in linked:
            path.unlink()
        raise PrunelabError(f"--out {out} gained files while pruning; this run's files were not written") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def _move_without_replacing(source: Path, target: Path) -> None:
    """A hard link fails when ``target`` exists, where a rename would replace it."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if target.exists():
            raise FileExistsError(target) from None
        os.rename(source, target)


def _remove_stale(paths, prefix: str) -> None:
    for path in paths:
        pid = path.name[len(prefix):].split("-")[0]
        if path.is_dir() and not path.is_symlink() and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid_text: str) -> bool:
    try:
        os.kill(int(pid_text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
