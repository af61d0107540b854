"""Uploaded files: a private temporary folder, cleaned names, size and extension checks.

The folder is made on the first upload with ``tempfile.mkdtemp`` (mode 0700, a name nobody can
guess), removed when the server exits, and folders left by servers that were killed are removed
when the next one starts (``remove_stale``, called by dashboard.serve). A file the engine refuses
is deleted at once (``discard``). A ``.txt`` of sentences is held to the text limit
(PRUNELAB_MAX_TEXT_MB) before it is written.
Nothing here touches Streamlit; dashboard.session re-exports these names for the pages.
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import tempfile
import threading
from pathlib import Path

from core.errors import PrunelabError
from core.limits import check_text_size

UPLOAD_SUFFIXES = {".pt2", ".onnx", ".pt", ".pth"}
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
PREFIX = "prunelab-uploads-"
_FOLDER: list[Path] = []
_FOLDER_LOCK = threading.Lock()


def folder() -> Path:
    """This server's private upload folder, made (and stale ones of dead servers removed) on first use."""
    with _FOLDER_LOCK:
        if not _FOLDER:
            remove_stale()
            _FOLDER.append(Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")))
            atexit.register(shutil.rmtree, _FOLDER[0], True)
        return _FOLDER[0]


def remove_stale() -> None:
    """Remove upload folders of this user whose server process is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = path.name[len(PREFIX):].split("-")[0]
        try:
            mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
            os.kill(int(pid), 0)
        except (ValueError, ProcessLookupError):
            if mine:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def save_upload(name: str, content: bytes, allowed: set[str]) -> str:
    """Write an uploaded file to ``<private folder>/<random folder>/<cleaned name>``; return the path.

    Every upload gets a folder of its own, even of the same bytes: two visitors uploading one file
    never share it, so a refusal that deletes one person's copy leaves the other's in place.

    Only the last component of the person's file name is kept, reduced to letters, digits, ``._-``
    and without leading dots, so it can never point outside that directory.
    Raises PrunelabError for a file that is empty, too large or has the wrong extension.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(name or "").replace("\\", "/")).name).lstrip(".")[-80:]
    suffix = Path(cleaned).suffix.lower()
    if suffix not in allowed:
        raise PrunelabError(f"'{name}' is not one of {', '.join(sorted(allowed))}")
    if len(content) > MAX_UPLOAD_BYTES:
        raise PrunelabError(f"'{name}' is {len(content) / 2**20:.0f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB")
    if suffix == ".txt":
        check_text_size(len(content), f"'{cleaned}'")
    if not content:
        raise PrunelabError(f"'{name}' is empty")
    place = folder() / secrets.token_hex(10)
    place.mkdir(mode=0o700)
    path = place / (Path(cleaned).stem + suffix)
    temporary = place / f".{path.name}.part"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(content)
    temporary.replace(path)
    return str(path)


def is_upload(path) -> bool:
    """True when ``path`` lies inside this server's upload folder."""
    return bool(_FOLDER) and Path(path).resolve().is_relative_to(_FOLDER[0].resolve())


def discard(*paths) -> None:
    """Delete uploaded files the engine refused (paths outside the upload folder are left alone)."""
    for path in paths:
        if path and is_upload(path):
            shutil.rmtree(Path(path).parent, ignore_errors=True)


def shown(text: str) -> str:
    """``text`` with the private upload directory left out, for messages a person reads."""
    if not _FOLDER:
        return text
    return re.sub(re.escape(str(_FOLDER[0])) + r"/[0-9a-f]+/", "", text)
