"""An on-disk cache of JSON results (today: sensitivity sweeps), shared by the CLI and the dashboard,
and MemoryLRU, the bounded in-memory map that holds measured reports.

Entries live as ``<key>.json`` files under ``$PRUNELAB_HOME/cache/<kind>/`` (``~/.prunelab`` by
default). A key is a digest of everything the result depends on (model digest, data digest,
settings), so a stale entry is never looked up rather than invalidated. Writes go through
``core.files.write_atomic``, so a reader never sees half a file.
Each kind keeps at most ``limit`` entries; the least recently used are removed first.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path

from core.files import home, write_atomic

DEFAULT_LIMIT = 64


def cache_key(*parts) -> str:
    """A stable digest of JSON-able ``parts`` (dict keys sorted), for naming an entry."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ResultCache:
    """JSON values by key in one directory, bounded to ``limit`` entries.

    ``kind`` names the subdirectory (e.g. ``"sensitivity"``); ``root`` defaults to
    ``home() / "cache"``, read when the cache is made so tests can point PRUNELAB_HOME elsewhere.
    """

    def __init__(self, kind: str, limit: int = DEFAULT_LIMIT, root: Path | None = None):
        self.directory = (root or home() / "cache") / kind
        self.limit = limit

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str):
        """The stored value, or ``None`` when absent or unreadable (a damaged entry is a miss)."""
        path = self._path(key)
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.utime(path)  # mark as recently used for eviction
        except OSError:
            pass
        return value

    def put(self, key: str, value) -> None:
        """Store ``value`` atomically, then trim the oldest entries beyond the limit."""
        write_atomic(self._path(key), json.dumps(value))
        self._trim()

    def clear(self) -> int:
        """Remove every entry of this kind; returns how many were removed."""
        entries = list(self.directory.glob("*.json")) if self.directory.exists() else []
        for path in entries:
            path.unlink(missing_ok=True)
        return len(entries)

    def _trim(self) -> None:
        entries = []
        for path in self.directory.glob("*.json"):
            try:
                entries.append((path.stat().st_mtime, path))
            except OSError:  # removed by another process meanwhile
                continue
        entries.sort()
        for _, path in entries[:max(0, len(entries) - self.limit)]:
            path.unlink(missing_ok=True)


class MemoryLRU:
    """A small thread-safe least-recently-used map in memory (reports and dense baselines)."""

    def __init__(self, entries: int):
        self.entries = entries
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
        return value

    def pop(self, key):
        """The value of ``key``, taken out of the map (None when absent)."""
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
