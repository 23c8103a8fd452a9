"""The SQLite store: runs round-trip, WAL, intent journaled before the outcome, events, hosts."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import MISSING, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from sheetrunner.model import (
    Accelerator,
    Action,
    AttemptObservation,
    AttemptState,
    HostObservation,
    RowLink,
    Run,
    Seen,
    Status,
)
from sheetrunner.store import Store, run_from_json, run_to_json
from tests.helpers import make_run

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
CET = timezone(timedelta(hours=1))


def full_run(run_id: str = "r-0001", **changes) -> Run:
    """A run with every field, its parts' included, set to a value other than its default."""
    values = dict(
        key="k" * 16,
        job="digits",
        params=(("lr", "0.1"), ("depth", "3"), ("name", "=not a formula")),
        gpus=2,
        where="gpu-a",
        status=Status.RETRYING,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=5),
        retries=3,
        attempt=2,
        host="gpu-a",
        accelerators=("0", "3"),
        crashes=1,
        started_at=T0 + timedelta(seconds=10),
        attempt_started_at=(T0 + timedelta(minutes=2)).astimezone(CET),
        finished_at=T0 + timedelta(minutes=4),
        next_attempt_at=T0 + timedelta(minutes=6),
        message="exit code 1: CUDA out of memory",
        metrics={"acc": 0.93, "loss": 0.21, "step": 400, "tags": ["a", "b"], "best": None,
                 "nested": {"x": 1.5}},
        summary={"min": {"loss": 0.2}, "max": {"acc": 0.95}, "history": {"acc": [0.5, 0.95]}},
        log_path="~/.sheetrunner/runs/r-0001/2/output.log",
        in_sheet=True,
        priority=2.5,
        row=17,
        last_action=Action.RERUN,
        duplicate_of="r-0000",
        replaced_by="r-0002",
        kept_cells={"metrics": "acc=0.9", "started": "2026-01-01 10:00:00"},
        released=True,
        sweep_id="sweep-1a2b3c4d",
        time_limit_s=7200.0,
        launch_error="agent launch failed: refused",
        launch_refused="GPU 0 is claimed by run 1a2b3c4d-x1 of sheet ns2",
        gpu_memory_mib=20480,
        avoid_host="gpu-b",
        stall_reason="stalled: no heartbeat for 700s; killed",
        timed_out=True,
        code="a1b2c3d+dirty",
        code_hash="ab" * 32,
        nodes=2,
        spread=(("gpu-a", ("0", "3")), ("gpu-c", ("1", "2"))),
        waited_cycles=4,
        slice_name="v4-32-a",
        in_cluster_queue=True,
    )
    values.update(changes)
    return make_run(run_id, **values)


def test_full_run_sets_every_field_away_from_its_default() -> None:
    run = full_run()
    checked = 0
    for part, kind in ((run, Run), (run.link, RowLink), (run.seen, Seen)):
        for f in fields(kind):
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:
                continue
            assert getattr(part, f.name) != default, f.name
            checked += 1
    assert checked >= 30


def test_run_round_trips_through_a_fresh_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "sheetrunner.db"
    run, other = full_run(), full_run("r-0002", status=Status.QUEUED, metrics={})
    store = Store(path)
    store.save_runs([run, other], now=T0)
    store.close()

    again = Store(path)
    loaded = again.run("r-0001")
    assert loaded == run
    # equal is not enough for datetimes (different offsets compare equal): keep the tz
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert loaded.attempt_started_at.utcoffset() == timedelta(hours=1)
    assert loaded.attempt_started_at == run.attempt_started_at
    assert isinstance(loaded.status, Status) and loaded.status is Status.RETRYING
    assert loaded.link.last_action is Action.RERUN
    assert type(loaded.spec.params) is tuple and all(type(p) is tuple for p in loaded.spec.params)
    assert type(loaded.accelerators) is tuple
    assert loaded.seen.metrics == run.seen.metrics
    assert again.runs() == {"r-0001": run, "r-0002": other}
    assert again.run("missing") is None
    again.close()


def test_run_with_defaults_round_trips() -> None:
    run = make_run(run_id="r", key="k", job="j", params=(), gpus=0, where=None, status=Status.QUEUED,
              created_at=T0, updated_at=T0)
    assert run_from_json(run_to_json(run)) == run


def test_json_ignores_unknown_fields_from_a_newer_version() -> None:
    text = run_to_json(full_run()).replace('"attempt": 2,', '"attempt": 2, "from_the_future": 1,')
    assert "from_the_future" in text
    assert run_from_json(text) == full_run()


def test_save_runs_replaces_by_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save_runs([full_run()], now=T0)
    store.save_runs([full_run(status=Status.SUCCEEDED, message="")], now=T0)
    assert list(store.runs()) == ["r-0001"]
    assert store.run("r-0001").status is Status.SUCCEEDED
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [("succeeded",)]


def test_journal_mode_is_wal(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # WAL is a property of the file: another connection sees it too
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_intent_is_committed_before_the_outcome(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    run = full_run(status=Status.LAUNCHING, attempt=3, host="gpu-b", accelerators=("1",))
    store.record_intent(run, T0)

    # a second connection (what a restarted daemon would open) already sees the intent
    other = sqlite3.connect(path)
    query = "SELECT run_id, attempt, host, accelerators, outcome FROM attempts"
    rows = other.execute(query).fetchall()
    assert rows == [("r-0001", 3, "gpu-b", '["1"]', "pending")]
    status = other.execute("SELECT status FROM runs WHERE run_id = 'r-0001'").fetchone()
    assert status == ("launching",)
    assert Store(path).run("r-0001") == run  # the run saved with the intent, whole

    store.record_outcome("r-0001", 3, "ok", "pid 4242", T0 + timedelta(seconds=1))
    assert other.execute("SELECT outcome, detail FROM attempts").fetchall() == [("ok", "pid 4242")]
    other.close()
    assert store.attempts("r-0001") == [{
        "attempt": 3, "host": "gpu-b", "accelerators": '["1"]', "launched_at": T0.isoformat(),
        "outcome": "ok", "detail": "pid 4242",
    }]
    kinds = [(e[2], e[3]) for e in store.events("r-0001")]
    assert kinds == [("launch-intent", "attempt=3 host=gpu-b"), ("launch-ok", "attempt=3 pid 4242")]
    store.close()


def test_attempts_are_kept_per_attempt_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for n in (2, 1, 3):
        store.record_intent(full_run(attempt=n, host=f"h{n}"), T0 + timedelta(minutes=n))
    store.record_outcome("r-0001", 1, "failed", "", T0)
    found = store.attempts("r-0001")
    assert [(a["attempt"], a["host"], a["outcome"]) for a in found] == [
        (1, "h1", "failed"), (2, "h2", "pending"), (3, "h3", "pending")]
    assert store.attempts("other") == []
    assert store.run("r-0001").attempt == 3  # the last intent's run is the stored one
    store.close()


def test_events_are_append_only_and_ordered(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    store.log_event("a", "claimed", "row 2", T0)
    store.save_runs([full_run("a")], events=[("a", "queued", ""), ("b", "invalid", "bad gpus")],
                    now=T0 + timedelta(seconds=1))
    before = store.events()
    store.log_event("a", "stopped", "by user", T0 - timedelta(days=1))  # an earlier clock
    store.save_runs([full_run("a", status=Status.STOPPED)], now=T0)  # no events: adds none
    after = store.events()

    assert after[: len(before)] == before  # nothing rewritten or removed
    assert after == [
        (T0.isoformat(), "a", "claimed", "row 2"),
        ((T0 + timedelta(seconds=1)).isoformat(), "a", "queued", ""),
        ((T0 + timedelta(seconds=1)).isoformat(), "b", "invalid", "bad gpus"),
        ((T0 - timedelta(days=1)).isoformat(), "a", "stopped", "by user"),
    ]  # in the order they were appended, not by their timestamps
    assert [e[2] for e in store.events("a")] == ["claimed", "queued", "stopped"]
    assert store.events("b") == [after[2]]
    store.close()
    assert Store(path).events() == after  # and they persist


def test_save_runs_is_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.save_runs([full_run("keep")], now=T0)
    bad_events = [("x", "ok", ""), ("y", None, "")]  # kind NOT NULL: the second insert fails
    with pytest.raises(sqlite3.IntegrityError):
        store.save_runs([full_run("lost")], events=bad_events, now=T0)
    assert set(store.runs()) == {"keep"}  # the run of the failed batch was rolled back
    assert store.events() == []
    store.save_runs([full_run("after")], now=T0)  # and the store is still usable
    assert set(store.runs()) == {"keep", "after"}
    store.close()


def test_hosts_keep_the_latest_observation(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = Store(path)
    seen = HostObservation(
        host="gpu-a", reachable=True, observed_at=T0, boot_id="boot-1",
        accelerators=(Accelerator("0", "H100", 1024, 81559, 97),
                      Accelerator("1", "H100", 0, 81559, 0, foreign=True)),
        load=3.5, disk_free_bytes=123_456_789_000,
        attempts=(AttemptObservation("r-0001", 2, AttemptState.RUNNING, None,
                                     T0 - timedelta(seconds=3), {"acc": 0.5}, "/log"),),
    )
    down = HostObservation(host="tpu-1", reachable=False, observed_at=T0, error="timed out",
                           down_since=T0 - timedelta(minutes=10))
    store.save_hosts([seen, down])
    store.save_hosts([replace(down, observed_at=T0 + timedelta(seconds=15))])
    store.close()

    hosts = Store(path).hosts()
    assert set(hosts) == {"gpu-a", "tpu-1"}
    a = hosts["gpu-a"]
    assert a["reachable"] is True and a["boot_id"] == "boot-1" and a["load"] == 3.5
    assert a["observed_at"] == T0.isoformat()
    assert a["disk_free_bytes"] == 123_456_789_000
    assert a["accelerators"][1] == {
        "index": "1", "name": "H100", "memory_used_mib": 0, "memory_total_mib": 81559,
        "utilization_pct": 0, "foreign": True, "healthy": True, "health": "", "uuid": "",
        "claim_namespace": "", "claim_run": "", "claim_user": "", "foreign_users": [],
    }
    (attempt,) = a["attempts"]
    assert attempt["run_id"] == "r-0001" and attempt["state"] == "running"
    assert attempt["heartbeat_at"] == (T0 - timedelta(seconds=3)).isoformat()
    assert attempt["metrics"] == {"acc": 0.5}
    t = hosts["tpu-1"]
    assert t["reachable"] is False and t["error"] == "timed out"
    assert t["observed_at"] == (T0 + timedelta(seconds=15)).isoformat()  # replaced, not added
    assert t["down_since"] == (T0 - timedelta(minutes=10)).isoformat()


def test_store_shared_by_eight_threads_loses_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    per_thread, errors = 25, []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                run = full_run(f"t{t}-{i}", row=i)
                store.save_runs([run], events=[(run.run_id, "queued", f"t{t}")], now=T0)
                assert store.runs()[run.run_id] == run  # reads interleave with writes
                if i % 5 == 0:
                    store.log_event(run.run_id, "note", "", T0)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    runs = store.runs()
    assert len(runs) == 8 * per_thread
    assert all(runs[f"t{t}-{i}"].link.row == i for t in range(8) for i in range(per_thread))
    events = store.events()
    assert len(events) == 8 * per_thread + 8 * (per_thread // 5)
    for t in range(8):  # each thread's events are in its own order
        mine = [e[1] for e in events if e[2] == "queued" and e[3] == f"t{t}"]
        assert mine == [f"t{t}-{i}" for i in range(per_thread)]
    store.close()


def test_rows_without_a_run_are_replaced_as_a_whole_each_cycle(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    store.save_noted_rows([{"row": 3, "job": "x", "params": [["lr", "0.1"]], "status": "invalid",
                            "message": "unknown job"}])
    store.save_noted_rows([{"row": 5, "job": "y", "params": [], "status": "invalid", "message": "m"}])
    assert [r["row"] for r in store.noted_rows()] == [5]
    store.close()
