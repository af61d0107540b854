"""Run history: every prune or saved measurement, kept in one SQLite file so it can be compared later.

The store is ``$PRUNELAB_HOME/runs.db`` (``~/.prunelab`` by default), in WAL mode. Every write is
one transaction, and each call opens its own connection with a busy timeout, so several dashboard
sessions and CLI processes can write at once. Files a run brings along (``files=``) are written
to ``$PRUNELAB_HOME/artifacts/<key>/`` through a temporary file and ``os.replace`` *before* the
row is committed: a process killed midway leaves at most an orphaned directory, never a row that
points at half a file, and earlier runs are untouched.

The schema version is ``PRAGMA user_version``; ``MIGRATIONS[i]`` turns version ``i`` into
``i + 1``. Opening an older store applies the missing steps in one transaction, so a newer
prunelab reads any older store; a store newer than this prunelab is refused.
"""
from __future__ import annotations

import json
import math
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.errors import PrunelabError
from core.files import home, sha256_file, write_atomic

BUSY_TIMEOUT_SECONDS = 30.0

MIGRATIONS = (
    # 0 -> 1: the first store.
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created TEXT NOT NULL,
        model TEXT NOT NULL,
        model_digest TEXT,
        plan TEXT NOT NULL,
        metrics TEXT NOT NULL,
        artifacts TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 1 -> 2: a person's label and notes, per-layer sparsity, the artifact directory the store owns.
    """
    ALTER TABLE runs ADD COLUMN label TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN notes TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN layer_sparsity TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE runs ADD COLUMN artifact_dir TEXT;
    CREATE INDEX runs_by_model ON runs (model, created);
    """,
    # 2 -> 3: the sha256 of every artifact when the run was recorded, so `runs check` notices a changed file.
    """
    ALTER TABLE runs ADD COLUMN digests TEXT NOT NULL DEFAULT '{}';
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class Run:
    """One recorded run.

    ``plan`` is the plan as plain values (``Plan.to_dict()``), ``metrics`` the whole evaluate
    report (``{"model", "plan", "pruned", "baseline", "notes"}``), ``layer_sparsity`` the
    effective sparsity per layer when known, ``artifacts`` name -> file path.
    """

    id: int
    created: str
    model: str
    model_digest: str | None
    plan: dict
    metrics: dict
    artifacts: dict = field(default_factory=dict)
    label: str = ""
    notes: str = ""
    layer_sparsity: dict = field(default_factory=dict)
    digests: dict = field(default_factory=dict)  # artifact name -> sha256 when recorded (none for older runs)

    @property
    def pruned(self) -> dict:
        """The pruned model's metrics (empty when the report has none)."""
        return self.metrics.get("pruned") or {}

    @property
    def quality(self) -> float | None:
        """Accuracy when the data is labelled, else agreement with the dense model."""
        value = self.pruned.get("accuracy")
        return self.pruned.get("agreement") if value is None else value

    @property
    def removed(self) -> float | None:
        """The measured share of the prunable weights zero or gone, any granularity (older runs: zero share)."""
        return self.pruned.get("removed", self.pruned.get("sparsity"))

    @property
    def latency_p50(self) -> float | None:
        return (self.pruned.get("latency_ms") or {}).get("p50")

    @property
    def compressed_bytes(self) -> int | None:
        return self.pruned.get("compressed_bytes")

    def to_dict(self) -> dict:
        return {"id": self.id, "created": self.created, "model": self.model, "model_digest": self.model_digest,
                "label": self.label, "notes": self.notes, "plan": self.plan, "metrics": self.metrics,
                "layer_sparsity": self.layer_sparsity, "artifacts": self.artifacts, "digests": self.digests}


class RunStore:
    """The run database at ``path`` (a file; its directory is created on first use)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else home() / "runs.db"
        self.artifact_root = self.path.parent / "artifacts"

    @contextmanager
    def _connect(self):
        """A fresh connection, migrated to SCHEMA_VERSION, closed on exit."""
        if self.path.is_dir():
            raise PrunelabError(f"the run store {self.path} is a folder, not an SQLite file: move it away and "
                                f"prunelab creates a new store there")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise PrunelabError(f"cannot open the run store {self.path}: {getattr(error, 'strerror', None) or error} "
                                f"(PRUNELAB_HOME must be a writable folder)") from None
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = NORMAL")
            _migrate(connection, self.path)
            yield connection
        except sqlite3.DatabaseError as error:
            raise PrunelabError(f"run store {self.path}: {error}") from None
        finally:
            connection.close()

    def record(self, report: dict, *, model=None, plan=None, layer_sparsity: dict | None = None,
               artifacts: dict | None = None, files: dict | None = None, label: str = "", notes: str = "",
               digests: dict | None = None) -> Run:
        """Keep one run and return it.

        report: the evaluate report (kept whole as the run's metrics).
        model: a ModelHandle or a name; defaults to ``report["model"]``.
        plan: a Plan or its dict; defaults to ``report["plan"]``.
        layer_sparsity: effective sparsity per layer; defaults to ``report["layer_sparsity"]``.
        artifacts: name -> path of files that already exist (e.g. ``prune --out``), kept as given.
        files: name -> bytes for the store to keep itself, written atomically under ``artifacts/``.
        digests: name -> sha256 of ``artifacts`` as their writer made them; files without one are hashed now.
        """
        model_name, digest = _model_identity(model if model is not None else report.get("model"))
        plan_values = _plan_values(plan if plan is not None else report.get("plan"))
        layer_sparsity = report.get("layer_sparsity") if layer_sparsity is None else layer_sparsity
        paths = {name: str(Path(path).resolve()) for name, path in (artifacts or {}).items()}
        artifact_dir = None
        if files:
            artifact_dir = self.artifact_root / uuid.uuid4().hex
            paths.update({name: str(write_atomic(artifact_dir / name, data)) for name, data in files.items()})
        digests = dict(digests or {})
        digests.update({name: sha256_file(path) for name, path in paths.items()
                        if name not in digests and Path(path).is_file()})
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        row = (created, model_name, digest, _dumps(plan_values), _dumps(report), _dumps(paths), label or "",
               notes or "", _dumps(layer_sparsity or {}), None if artifact_dir is None else str(artifact_dir),
               _dumps(digests))
        with self._connect() as connection, _transaction(connection):
            run_id = _insert_run(connection, row)
        return self.get(run_id)

    def list(self, model: str | None = None) -> list[Run]:
        """All runs, newest first (only ``model``'s when given)."""
        query, arguments = "SELECT * FROM runs", ()
        if model is not None:
            query, arguments = query + " WHERE model = ?", (model,)
        with self._connect() as connection:
            rows = connection.execute(query + " ORDER BY id DESC", arguments).fetchall()
        return [_run_from_row(row) for row in rows]

    def get(self, run_id: int) -> Run:
        """The run with ``run_id``; PrunelabError when there is none."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM runs WHERE id = ?", (_run_id(run_id),)).fetchone()
        if row is None:
            raise PrunelabError(f"no run with id {run_id} in {self.path}")
        return _run_from_row(row)

    def delete(self, run_id: int) -> None:
        """Forget a run and remove the files the store wrote for it (never files given as ``artifacts``)."""
        with self._connect() as connection, _transaction(connection):
            row = connection.execute("SELECT artifact_dir FROM runs WHERE id = ?", (_run_id(run_id),)).fetchone()
            if row is None:
                raise PrunelabError(f"no run with id {run_id} in {self.path}")
            connection.execute("DELETE FROM runs WHERE id = ?", (_run_id(run_id),))
        if row["artifact_dir"]:
            shutil.rmtree(row["artifact_dir"], ignore_errors=True)

    def update(self, run_id: int, *, label: str | None = None, notes: str | None = None) -> Run:
        """Change a run's label and/or notes."""
        with self._connect() as connection, _transaction(connection):
            for column, value in (("label", label), ("notes", notes)):
                if value is not None:
                    connection.execute(f"UPDATE runs SET {column} = ? WHERE id = ?", (value, _run_id(run_id)))
        return self.get(run_id)

    def orphans(self, min_age_seconds: float = 3600.0) -> list[Path]:
        """Artifact directories no run points at (left by a killed writer), older than ``min_age_seconds``.

        The age keeps a writer that is still between its files and its commit off the list.
        """
        if not self.artifact_root.is_dir():
            return []
        with self._connect() as connection:
            owned = {row[0] for row in connection.execute(
                "SELECT artifact_dir FROM runs WHERE artifact_dir IS NOT NULL")}
        now = time.time()
        return sorted(path for path in self.artifact_root.iterdir()
                      if path.is_dir() and str(path) not in owned and now - path.stat().st_mtime >= min_age_seconds)

    def remove_orphans(self, min_age_seconds: float = 3600.0) -> list[Path]:
        """Delete the directories ``orphans`` lists; returns them."""
        found = self.orphans(min_age_seconds)
        for path in found:
            shutil.rmtree(path, ignore_errors=True)
        return found

    def check_artifacts(self) -> dict:
        """Every run's artifacts against the digests recorded with it.

        Returns ``{"checked", "unverified", "missing", "changed"}``: counts of files that match and of
        files recorded without a digest (runs older than digests), and lists of
        ``"run N: name (path)"`` for files that are gone or differ from what the run wrote.
        """
        found = {"checked": 0, "unverified": 0, "missing": [], "changed": []}
        for run in self.list():
            for name, path in run.artifacts.items():
                where = f"run {run.id}: {name} ({path})"
                if not Path(path).is_file():
                    found["missing"].append(where)
                elif name not in run.digests:
                    found["unverified"] += 1
                elif sha256_file(path) != run.digests[name]:
                    found["changed"].append(where)
                else:
                    found["checked"] += 1
        return found

    def require_writable(self) -> None:
        """Open the store and take its write lock once: a corrupt, newer or read-only store is refused
        before a long job that would record into it."""
        with self._connect() as connection, _transaction(connection):
            pass

    def integrity(self) -> str:
        """``PRAGMA integrity_check``: ``"ok"`` for a sound database."""
        with self._connect() as connection:
            return "; ".join(row[0] for row in connection.execute("PRAGMA integrity_check"))

    def version(self) -> int:
        with self._connect() as connection:
            return connection.execute("PRAGMA user_version").fetchone()[0]


@contextmanager
def _transaction(connection: sqlite3.Connection):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the write lock is taken up front)."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise PrunelabError(f"run store {path} has schema version {version}, newer than this prunelab "
                            f"understands ({SCHEMA_VERSION}); upgrade prunelab")
    with _transaction(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _insert_run(connection: sqlite3.Connection, row: tuple) -> int:
    cursor = connection.execute(
        "INSERT INTO runs (created, model, model_digest, plan, metrics, artifacts, label, notes, layer_sparsity, "
        "artifact_dir, digests) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    return cursor.lastrowid


def _run_from_row(row: sqlite3.Row) -> Run:
    return Run(id=row["id"], created=row["created"], model=row["model"], model_digest=row["model_digest"],
               plan=json.loads(row["plan"]), metrics=json.loads(row["metrics"]),
               artifacts=json.loads(row["artifacts"]), label=row["label"], notes=row["notes"],
               layer_sparsity=json.loads(row["layer_sparsity"]), digests=json.loads(row["digests"]))


def _run_id(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PrunelabError(f"a run id is a whole number, got {value!r}") from None


def _model_identity(model) -> tuple[str, str | None]:
    """(name, digest) from a ModelHandle, a report's model entry (dict or name) or None."""
    if model is None:
        return "unknown", None
    if isinstance(model, str):
        return model, None
    if isinstance(model, dict):
        return str(model.get("name", "unknown")), model.get("digest")
    return str(model.name), getattr(model, "digest", None)


def _plan_values(plan) -> dict:
    if plan is None:
        return {}
    if hasattr(plan, "to_dict"):
        return plan.to_dict()
    if isinstance(plan, dict):
        return dict(plan)
    raise PrunelabError(f"a run's plan must be a Plan or a dict, got {type(plan).__name__}")


def _dumps(value) -> str:
    """JSON for a column; NaN and infinities become null so every reader can parse it."""
    return json.dumps(_finite(value), sort_keys=True, default=str)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# The module-level API uses the store under home(), looked up at each call.

def record_run(report: dict, **details) -> Run:
    """Keep one run in the default store; ``details`` as for RunStore.record."""
    return RunStore().record(report, **details)


def list_runs(model: str | None = None) -> list[Run]:
    """All runs in the default store, newest first."""
    return RunStore().list(model)


def get_run(run_id: int) -> Run:
    return RunStore().get(run_id)


def delete_run(run_id: int) -> None:
    RunStore().delete(run_id)

