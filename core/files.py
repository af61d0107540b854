"""Where prunelab keeps its files and how it writes them.

``home()`` is the data directory (run store, artifacts, caches); ``write_atomic`` is the one way
prunelab writes a file a reader may open at the same time.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def home() -> Path:
    """prunelab's data directory: ``$PRUNELAB_HOME`` or ``~/.prunelab``, read at each call."""
    return Path(os.environ.get("PRUNELAB_HOME") or Path.home() / ".prunelab")


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temporary file beside it.

    The temporary file is flushed to disk, given the usual 0644 mode and moved into place with
    ``os.replace``: a reader sees the old file or the whole new one, never a part, and a crash
    leaves at most a ``.<name>.*.tmp`` file beside it. Missing parent directories are created.
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else bytes(data)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes the file private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
