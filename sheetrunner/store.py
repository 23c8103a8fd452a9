"""SQLite state: runs, their attempts, hosts, and an append-only event journal.

The store is the daemon's memory across restarts. Intent is journaled before
acting: a launch is recorded (attempt row with outcome 'pending') and
committed before the command is sent, and its outcome after. WAL mode with
synchronous=FULL, so a committed intent survives a crash of the daemon.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from .model import Action, HostObservation, RowLink, Run, RunSpec, Seen, Status

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    host TEXT NOT NULL,
    accelerators TEXT NOT NULL,
    launched_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, attempt)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS noted_rows (
    row INTEGER PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class Store:
    """One SQLite file in the state directory; safe to share between threads.

    The store is a cache: the ids the sheet shows and the attempt directories on
    the hosts are the truth, and the core rebuilds whatever the store lacks. So a
    corrupt or unreadable file is moved aside (kept, for a person to look at) and
    a fresh one started, rather than stopping the daemon."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.moved_aside: Path | None = None
        self._lock = threading.Lock()
        try:
            self._db = _open(path)
        except sqlite3.DatabaseError as exc:
            self.moved_aside = _move_aside(path)
            log.warning(
                "state store %s is unreadable (%s); kept as %s and rebuilt from the "
                "sheet and the hosts",
                path,
                exc,
                self.moved_aside,
            )
            self._db = _open(path)

    def close(self) -> None:
        self._db.close()

    # -- what the daemon remembers of its sheet -------------------------------------------------

    def namespace(self, source: str) -> str | None:
        """The namespace this state last used for the sheet `source`."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", (f"namespace:{source}",)
            ).fetchone()
        return row[0] if row else None

    def remember_namespace(self, source: str, namespace: str) -> None:
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                (f"namespace:{source}", namespace),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('namespace', ?)", (namespace,)
            )

    def last_namespace(self) -> str | None:
        """The namespace of the sheet this state last served (for `logs`, `pool`)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'namespace'").fetchone()
        return row[0] if row else None

    # -- runs ---------------------------------------------------------------------------------

    def runs(self) -> dict[str, Run]:
        with self._lock:
            rows = self._db.execute("SELECT data FROM runs").fetchall()
        return {run.run_id: run for run in (run_from_json(r[0]) for r in rows)}

    def run(self, run_id: str) -> Run | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return run_from_json(row[0]) if row else None

    def save_runs(
        self,
        runs: Iterable[Run],
        events: Iterable[tuple[str, str, str]] = (),
        now: datetime | None = None,
    ) -> None:
        """Save runs and append events in one transaction."""
        at = (now or datetime.now().astimezone()).isoformat()
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO runs (run_id, status, data) VALUES (?, ?, ?)",
                [(r.run_id, r.status.value, run_to_json(r)) for r in runs],
            )
            self._db.executemany(
                "INSERT INTO events (at, run_id, kind, detail) VALUES (?, ?, ?, ?)",
                [(at, run_id, kind, detail) for run_id, kind, detail in events],
            )

    # -- rows with no run (invalid), as the last cycle saw them: for `ps` ---------------------

    def save_noted_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the rows that have no run: `row`, `job`, `params`, `status`, `message`."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM noted_rows")
            self._db.executemany(
                "INSERT OR REPLACE INTO noted_rows (row, data) VALUES (?, ?)",
                [(r["row"], json.dumps(r)) for r in rows],
            )

    def noted_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            found = self._db.execute("SELECT data FROM noted_rows ORDER BY row").fetchall()
        return [json.loads(r[0]) for r in found]

    # -- attempts: the launch journal ----------------------------------------------------------

    def record_intent(self, run: Run, now: datetime) -> None:
        """Commit 'about to launch attempt N of run R on host H' before sending anything."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?, ?, 'pending', '')",
                (
                    run.run_id,
                    run.attempt,
                    run.host,
                    json.dumps(list(run.accelerators)),
                    now.isoformat(),
                ),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO runs (run_id, status, data) VALUES (?, ?, ?)",
                (run.run_id, run.status.value, run_to_json(run)),
            )
            self._event(now, run.run_id, "launch-intent", f"attempt={run.attempt} host={run.host}")

    def record_outcome(
        self, run_id: str, attempt: int, outcome: str, detail: str, now: datetime
    ) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE attempts SET outcome = ?, detail = ? WHERE run_id = ? AND attempt = ?",
                (outcome, detail, run_id, attempt),
            )
            self._event(now, run_id, f"launch-{outcome}", f"attempt={attempt} {detail}".strip())

    def attempts(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute(
                "SELECT attempt, host, accelerators, launched_at, outcome, detail FROM attempts "
                "WHERE run_id = ? ORDER BY attempt",
                (run_id,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- events -------------------------------------------------------------------------------

    def log_event(self, run_id: str, kind: str, detail: str, now: datetime) -> None:
        with self._lock, self._db:
            self._event(now, run_id, kind, detail)

    def _event(self, now: datetime, run_id: str, kind: str, detail: str) -> None:
        self._db.execute(
            "INSERT INTO events (at, run_id, kind, detail) VALUES (?, ?, ?, ?)",
            (now.isoformat(), run_id, kind, detail),
        )

    def events(self, run_id: str | None = None) -> list[tuple[str, str, str, str]]:
        query = "SELECT at, run_id, kind, detail FROM events"
        args: tuple[str, ...] = ()
        if run_id:
            query, args = query + " WHERE run_id = ?", (run_id,)
        with self._lock:
            return list(self._db.execute(query + " ORDER BY id", args).fetchall())

    # -- hosts: the last probe of each, for `pool` and for outage tracking ----------------------

    def save_hosts(self, observations: Iterable[HostObservation]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO hosts (name, data) VALUES (?, ?)",
                [(o.host, json.dumps(_jsonable(asdict(o)))) for o in observations],
            )

    def hosts(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT name, data FROM hosts").fetchall()
        return {name: json.loads(data) for name, data in rows}


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise sqlite3.DatabaseError("integrity check failed")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.execute("SELECT data FROM runs LIMIT 1").fetchall()
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _move_aside(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.replace(Path(f"{aside}{suffix}"))
    return aside


# -- (de)serialising runs ----------------------------------------------------------------------

_DATETIME_FIELDS = {f.name for f in fields(Run) if "datetime" in str(f.type)}
_PARTS = {"spec": RunSpec, "link": RowLink, "seen": Seen}


def run_to_json(run: Run) -> str:
    return json.dumps(_jsonable(asdict(run)), sort_keys=True)


def run_from_json(text: str) -> Run:
    """A stored run; a run stored flat by an earlier version is read into its parts."""
    data = _nested(json.loads(text))
    known = {f.name for f in fields(Run)}
    data = {k: v for k, v in data.items() if k in known}
    for name in _DATETIME_FIELDS:
        if data.get(name):
            data[name] = datetime.fromisoformat(data[name])
    spec = data["spec"]
    data["spec"] = RunSpec(spec["key"], spec["job"], tuple(tuple(p) for p in spec["params"]))
    link = {k: v for k, v in data.get("link", {}).items() if k in _names(RowLink)}
    link["last_action"] = Action(link.get("last_action", "run"))
    data["link"] = RowLink(**link)
    data["seen"] = Seen(**{k: v for k, v in data.get("seen", {}).items() if k in _names(Seen)})
    data["accelerators"] = tuple(data.get("accelerators", ()))
    data["spread"] = tuple((host, tuple(accs)) for host, accs in data.get("spread", ()))
    data["status"] = Status(data["status"])
    return Run(**data)


def _nested(data: dict[str, Any]) -> dict[str, Any]:
    """Move the fields of a flat stored run into its parts (spec, link, seen)."""
    if "spec" in data:
        return data
    for part, kind in _PARTS.items():
        data[part] = {name: data.pop(name) for name in _names(kind) if name in data}
    return data


def _names(kind: type) -> set[str]:
    return {f.name for f in fields(kind)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Status | Action):
        return value.value
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
