"""Where prunelab keeps its files and how it writes them.

``ASSETS`` holds what the package ships (the demo models' data, weights and cards);
``home()`` is the person's data directory (run store, artifacts, caches); ``write_atomic`` is
the one way prunelab writes a file a reader may open at the same time.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path

from core.errors import PrunelabError

# Package data (see [tool.setuptools.package-data] in pyproject.toml), found through the import
# system so that an installed prunelab works from any folder, not only a checkout.
ASSETS = Path(str(resources.files("core").joinpath("zoo", "assets")))


def home() -> Path:
    """prunelab's data directory: ``$PRUNELAB_HOME`` or ``~/.prunelab``, read at each call."""
    return Path(os.environ.get("PRUNELAB_HOME") or Path.home() / ".prunelab")


def writable_home() -> Path:
    """``home()``, created if needed and checked with a probe file, before a long job relies on it.

    Raises PrunelabError in one line when PRUNELAB_HOME is a file, cannot be created or is read-only.
    """
    return writable_folder(home(), "PRUNELAB_HOME", "point PRUNELAB_HOME at")


def writable_folder(path: str | Path, what: str = "folder", advice: str = "choose") -> Path:
    """``path``, created if needed and checked with a probe file, so a long job fails before it starts.

    Raises PrunelabError in one line naming ``what`` when ``path`` is a file, cannot be created or
    is read-only; ``advice`` starts the hint ("choose a writable folder").
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PrunelabError(f"{what} {path} is a file, not a folder: {advice} a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        descriptor, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(descriptor)
        os.unlink(probe)
    except OSError as error:
        raise PrunelabError(f"cannot write to {what} {path}: {error.strerror or error} "
                            f"({advice} a writable folder)") from None
    return path


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


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            hasher.update(block)
    return hasher.hexdigest()
