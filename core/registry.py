"""The run registry: every distillation, evaluation and benchmark cell, in one SQLite file.

One row per run (its kind, full config as JSON and its hash, metrics, timings, the commit, a pointer to its
export) and one row per student evaluation of a run (protocol, student, epochs, split, accuracy per seed).
Written by the CLI (``distill``, ``evaluate``, ``bench``) and the app alike.

- Safe with several writers at once: WAL journal, a busy timeout, each write one transaction.
- Versioned: ``PRAGMA user_version`` is the schema version; an older file is migrated in place, step by
  step (``MIGRATIONS``), inside one transaction.
- Never overwrites what it did not write: a file that is not SQLite, or a SQLite file of another
  application (``PRAGMA application_id``), or one newer than this code, is refused with a clear error.

The default file is ``<cache>/runs/registry.sqlite`` ($DISTILL_REGISTRY overrides it). stdlib only.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from core.errors import DistillError

APPLICATION_ID = 0x44535452   # "DSTR": marks a Distill Studio registry
REGISTRY_ENV = "DISTILL_REGISTRY"
KINDS = ("distill", "app", "evaluate", "bench", "sweep", "tune")
CLI_OWNER = "cli"               # the owner of what the command line (distill, evaluate, bench, sweep, tune) records
UNKNOWN_OWNER = "app:unknown"   # app runs recorded before runs had owners

# MIGRATIONS[v] takes a file from schema version v to v + 1 (a new file runs them all).
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: runs with their config and metrics
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created REAL NOT NULL,
        kind TEXT NOT NULL,
        config TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 1 -> 2: provenance, export pointer, tags; student evaluations
    """
    ALTER TABLE runs ADD COLUMN config_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN timings TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE runs ADD COLUMN git_commit TEXT;
    ALTER TABLE runs ADD COLUMN export_path TEXT;
    ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN name TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    CREATE INDEX runs_config_hash ON runs (config_hash);
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        created REAL NOT NULL,
        protocol TEXT NOT NULL,
        architecture TEXT NOT NULL,
        epochs INTEGER NOT NULL,
        split TEXT NOT NULL,
        seeds TEXT NOT NULL,
        accuracies TEXT NOT NULL,
        accuracy_mean REAL NOT NULL,
        seconds TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX evaluations_run ON evaluations (run_id);
    """,
    # 2 -> 3: who made each run (a browser session of the app, or "cli"); the app's runs before owners existed
    # belong to no session that still exists
    f"""
    ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '{CLI_OWNER}';
    UPDATE runs SET owner = '{UNKNOWN_OWNER}' WHERE kind = 'app';
    CREATE INDEX runs_owner ON runs (owner);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class RegistryError(DistillError, ValueError):
    """The registry file is not one this code can use (not SQLite, another application's, or newer)."""


def default_path() -> Path:
    from core.config import cache_dir

    return Path(os.environ.get(REGISTRY_ENV) or cache_dir() / "runs" / "registry.sqlite")


def current_commit(root: str | Path | None = None) -> str | None:
    """The git commit of the project's checkout (None outside a git work tree)."""
    root = Path(root or Path(__file__).resolve().parent.parent)
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _json(value: Any) -> str:
    """JSON with NaN / inf as null (SQLite rows stay valid JSON for any reader)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(value), sort_keys=True, default=str)


class Registry:
    """The registry at ``path`` (created with its parent folders when missing). Use as a context manager or
    call ``close``. Every method is one transaction; rows come back as dicts with JSON fields decoded. One
    object may be shared by threads (the app's sessions and jobs): its connection is used under a lock."""

    def __init__(self, path: str | Path | None = None, timeout_s: float = 30.0):
        self.path = Path(path) if path is not None else default_path()
        self._check_file()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:   # a read-only file system, a folder it may not write
            raise RegistryError(f"{self.path}: the run registry cannot be opened ({exc}). Point ${REGISTRY_ENV} "
                                "at a writable file, or give --registry none") from exc
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._open()
            self._check_integrity()
        except sqlite3.Error as exc:   # damaged pages, a read-only file system, a locked file
            self._db.close()
            raise RegistryError(f"{self.path}: not a usable run registry ({exc}); it was left as it is. Move it "
                                f"away or point ${REGISTRY_ENV} at another file") from exc

    def _check_file(self) -> None:
        if self.path.is_dir():
            raise RegistryError(f"{self.path} is a folder; the run registry is a file (e.g. {self.path / 'registry.sqlite'})")
        if self.path.is_file() and self.path.stat().st_size:
            with open(self.path, "rb") as f:
                if f.read(16) != b"SQLite format 3\x00":
                    raise RegistryError(f"{self.path} is not a SQLite file, so not a run registry; it was left as it "
                                        f"is. Move it away or point ${REGISTRY_ENV} at another file")

    def _check_integrity(self) -> None:
        """Refuse a file whose pages are damaged now, rather than failing on the first write after an export."""
        problems = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"damaged: {problems[0]}")

    def _open(self) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")   # one writer migrates; the others wait and then see the new version
        try:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
            if app != APPLICATION_ID and (tables or version):
                raise RegistryError(f"{self.path} is a SQLite file of another application (application_id {app}); "
                                    f"it was left as it is. Point ${REGISTRY_ENV} at another file")
            if version > SCHEMA_VERSION:
                raise RegistryError(f"{self.path} has registry schema {version}, newer than this code's "
                                    f"{SCHEMA_VERSION}; update Distill Studio to read it")
            for step in range(version, SCHEMA_VERSION):
                for statement in (s.strip() for s in MIGRATIONS[step].split(";")):
                    if statement:
                        db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA journal_mode = WAL")

    def _execute(self, sql: str, args: tuple | list = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # -- writing -----------------------------------------------------------------------------------

    def add_run(self, kind: str, config: dict, metrics: dict | None = None, timings: dict | None = None,
                config_hash: str = "", export_path: str | None = None, source: str = "", name: str = "",
                commit: str | None = None, owner: str = CLI_OWNER) -> int:
        """Record a run; returns its id. ``owner``: the app's browser session that made it, else "cli"."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        cursor = self._execute(
            "INSERT INTO runs (created, kind, config, metrics, config_hash, timings, git_commit, export_path, source, "
            "name, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), kind, _json(config), _json(metrics or {}), config_hash, _json(timings or {}),
             commit if commit is not None else current_commit(), export_path, source, name, owner))
        return int(cursor.lastrowid)

    def add_evaluation(self, run_id: int, protocol: str, architecture: str, epochs: int, split: str,
                       seeds: Iterable[int], accuracies: Iterable[float], seconds: Iterable[float] = ()) -> int:
        """Record the students of one evaluation of run ``run_id`` (accuracies as fractions, one per seed)."""
        seeds, accuracies = list(seeds), [float(a) for a in accuracies]
        if len(seeds) != len(accuracies) or not accuracies:
            raise ValueError(f"need one accuracy per seed, got {len(accuracies)} for {len(seeds)} seeds")
        cursor = self._execute(
            "INSERT INTO evaluations (run_id, created, protocol, architecture, epochs, split, seeds, accuracies, "
            "accuracy_mean, seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, time.time(), protocol, architecture, int(epochs), split, _json(seeds), _json(accuracies),
             sum(accuracies) / len(accuracies), _json(list(seconds))))
        return int(cursor.lastrowid)

    def update(self, run_id: int, *, pinned: bool | None = None, tags: list[str] | None = None,
               name: str | None = None, metrics: dict | None = None) -> None:
        changes = {k: v for k, v in (("pinned", None if pinned is None else int(pinned)),
                                     ("tags", None if tags is None else _json(sorted(set(tags)))),
                                     ("name", name), ("metrics", None if metrics is None else _json(metrics)))
                   if v is not None}
        if changes:
            self._execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                             (*changes.values(), run_id))

    def delete(self, run_id: int) -> None:
        """Remove a run and its evaluations (the export it points to is left alone)."""
        self._execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- reading -----------------------------------------------------------------------------------

    def runs(self, kind: str | None = None, config_hash: str | None = None,
             owners: Iterable[str] | None = None) -> list[dict]:
        """Runs, oldest first, each with its ``evaluations`` (a list, oldest first); ``owners``: only theirs."""
        where, args = [], []
        for column, value in (("kind", kind), ("config_hash", config_hash)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if owners is not None:
            owners = list(owners)
            where.append(f"owner IN ({', '.join('?' * len(owners))})")
            args.extend(owners)
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
                                    + " ORDER BY id", args).fetchall()
            all_evaluations = self._db.execute("SELECT * FROM evaluations ORDER BY id").fetchall()
        evaluations: dict[int, list[dict]] = {}
        for e in all_evaluations:
            evaluations.setdefault(e["run_id"], []).append(
                {**dict(e), **{k: json.loads(e[k]) for k in ("seeds", "accuracies", "seconds")}})
        return [{**dict(r), **{k: json.loads(r[k]) for k in ("config", "metrics", "timings", "tags")},
                 "pinned": bool(r["pinned"]), "evaluations": evaluations.get(r["id"], [])} for r in rows]

    def get(self, run_id: int, owners: Iterable[str] | None = None) -> dict:
        found = [r for r in self.runs(owners=owners) if r["id"] == run_id]
        if not found:
            raise KeyError(f"run {run_id} is not in the registry {self.path}")
        return found[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def view(self, owner: str) -> "RegistryView":
        return RegistryView(self, owner)


class ReadOnlyRunError(DistillError, ValueError):
    """A session asked to change or delete a run it does not own."""


class RegistryView:
    """The registry as one owner (a browser session of the app) sees it: its own runs, which it may change and
    delete, and the command line's, read-only. Other sessions' runs are invisible. What it records is its own.
    It shows no file path: a served app must not tell its users where the server keeps its files."""

    def __init__(self, registry: Registry, owner: str):
        if owner == CLI_OWNER:
            raise ValueError(f"{CLI_OWNER!r} is the command line's owner, not a session's")
        self._registry, self.owner = registry, owner
        self._visible = (owner, CLI_OWNER)

    def owns(self, run: dict) -> bool:
        return run.get("owner") == self.owner

    def add_run(self, *args, **kwargs) -> int:
        return self._registry.add_run(*args, **{**kwargs, "owner": self.owner})

    def runs(self, kind: str | None = None, config_hash: str | None = None) -> list[dict]:
        return self._registry.runs(kind, config_hash, owners=self._visible)

    def get(self, run_id: int) -> dict:
        try:
            return self._registry.get(run_id, owners=self._visible)
        except KeyError:
            raise KeyError(f"run {run_id} is not among this session's runs") from None

    def _own(self, run_id: int) -> None:
        if not self.owns(self.get(run_id)):
            raise ReadOnlyRunError(f"run {run_id} was recorded by the command line: it is read-only here")

    def add_evaluation(self, run_id: int, *args, **kwargs) -> int:
        self._own(run_id)
        return self._registry.add_evaluation(run_id, *args, **kwargs)

    def update(self, run_id: int, **changes) -> None:
        self._own(run_id)
        self._registry.update(run_id, **changes)

    def delete(self, run_id: int) -> None:
        self._own(run_id)
        self._registry.delete(run_id)
