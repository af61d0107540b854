"""Uploaded files: a private temporary folder, cleaned names, size and extension checks.

Nothing here touches Streamlit; dashboard.session re-exports these names for the pages.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from core.errors import PrunelabError

UPLOAD_SUFFIXES = {".pt2", ".onnx", ".pt", ".pth"}
MAX_UPLOAD_BYTES = 200 * 1024 * 1024
_UPLOADS = Path(tempfile.gettempdir()) / f"prunelab-uploads-{os.getpid()}"


def save_upload(name: str, content: bytes, allowed: set[str]) -> str:
    """Write an uploaded file to ``<private temp dir>/<content hash>/<cleaned name>``; return the path.

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
    if not content:
        raise PrunelabError(f"'{name}' is empty")
    folder = _UPLOADS / hashlib.sha256(content).hexdigest()[:20]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / (Path(cleaned).stem + suffix)
    if not path.exists():
        temporary = folder / f".{path.name}.part"
        temporary.write_bytes(content)
        temporary.replace(path)
    return str(path)


def shown(text: str) -> str:
    """``text`` with the private upload directory left out, for messages a person reads."""
    return re.sub(re.escape(str(_UPLOADS)) + r"/[0-9a-f]+/", "", text)
