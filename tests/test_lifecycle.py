"""The run's transitions, one table: (status before, event) -> status after.

Every status change of the core goes through sheetrunner/lifecycle.py; this table
is its specification, and the reconcile tests drive the same transitions from rows,
probes and the clock."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sheetrunner import lifecycle
from sheetrunner.model import Run, Status
from tests.helpers import make_run

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def run_in(status: Status, crashes: int = 0, retries: int = 2) -> Run:
    return make_run("abcdef01-x1", "k", "train", (), 1, None, status, T0, T0, retries=retries,
               crashes=crashes, attempt=1 if status != Status.QUEUED else 0, host="a")


EVENTS = {
    "hold": lambda r: lifecycle.hold(r),
    "queue": lambda r: lifecycle.queue(r),
    "launch": lambda r: lifecycle.launch(r, "a", ("0",), T0),
    "running": lambda r: lifecycle.running(r),
    "succeed": lambda r: lifecycle.succeed(r, T0),
    "crash": lambda r: lifecycle.crash(r, T0, "exit code 1", 30, 3600),
    "fail": lambda r: lifecycle.fail(r, T0, "time limit 2h reached"),
    "stall": lambda r: lifecycle.stall(r, 700),
    "lose": lambda r: lifecycle.lose(r, "host a unreachable"),
    "found_again": lambda r: lifecycle.found_again(r),
    "stop": lambda r: lifecycle.stop(r, T0, "stopped: the row's action is stop"),
    "unplaceable": lambda r: lifecycle.unplaceable(r, "needs 8 accelerators"),
    "invalid": lambda r: lifecycle.invalid(r, "unknown job"),
}

TABLE = [
    (Status.QUEUED, "launch", Status.LAUNCHING),
    (Status.QUEUED, "hold", Status.HELD),
    (Status.HELD, "queue", Status.QUEUED),
    (Status.QUEUED, "unplaceable", Status.UNPLACEABLE),
    (Status.UNPLACEABLE, "queue", Status.QUEUED),
    (Status.QUEUED, "invalid", Status.INVALID),
    (Status.LAUNCHING, "running", Status.RUNNING),
    (Status.LAUNCHING, "lose", Status.LOST),
    (Status.LOST, "found_again", Status.LAUNCHING),
    (Status.LOST, "running", Status.RUNNING),
    (Status.RUNNING, "succeed", Status.SUCCEEDED),
    (Status.RUNNING, "crash", Status.RETRYING),
    (Status.RUNNING, "stall", Status.STALLED),
    (Status.STALLED, "crash", Status.RETRYING),
    (Status.RUNNING, "fail", Status.FAILED),
    (Status.RUNNING, "stop", Status.STOPPED),
    (Status.RETRYING, "launch", Status.LAUNCHING),
    (Status.RETRYING, "hold", Status.HELD),
    (Status.RETRYING, "stop", Status.STOPPED),
]


@pytest.mark.parametrize("before, event, after", TABLE)
def test_the_transition_table(before, event, after):
    run = run_in(before)
    EVENTS[event](run)
    assert run.status == after
    assert (run.message != "") == (after in {Status.HELD, Status.UNPLACEABLE, Status.INVALID,
                                            Status.RETRYING, Status.FAILED, Status.STALLED,
                                            Status.LOST, Status.STOPPED})


def test_a_crash_past_the_retries_fails_and_says_so():
    run = run_in(Status.RUNNING, crashes=2, retries=2)
    lifecycle.crash(run, T0, "exit code 1", 30, 3600)
    assert run.status == Status.FAILED and run.message.startswith("no retries left (2 allowed)")
    assert run.finished_at == T0


def test_backoff_doubles_up_to_its_cap():
    delays = []
    run = run_in(Status.RUNNING, retries=10)
    for _ in range(5):
        lifecycle.crash(run, T0, "x", 30, 100)
        delays.append((run.next_attempt_at - T0).total_seconds())
    assert delays == [30, 60, 100, 100, 100]


def test_a_retry_keeps_its_reason_when_it_launches_and_a_first_launch_clears_the_message():
    run = run_in(Status.RUNNING)
    lifecycle.crash(run, T0, "exit code 1", 30, 3600)
    lifecycle.launch(run, "a", (), T0)
    assert run.message.startswith("retry 1/2") and run.attempt == 2
    fresh = run_in(Status.QUEUED)
    fresh.message = "waiting for a free CPU slot"
    lifecycle.launch(fresh, "a", (), T0)
    assert fresh.message == ""


def test_no_status_is_assigned_outside_the_lifecycle_module():
    from pathlib import Path

    core = Path(lifecycle.__file__).parent / "reconcile.py"
    assert ".status = " not in core.read_text() and "run.status, " not in core.read_text()
