"""A run's states and the transitions between them: the one place `status` changes.

Part of the pure core. `reconcile` decides *when* a transition happens (from the
row, the probes, the clock); each function here is one transition and sets the
status, the times and the message together, so a status never comes without
the reason a person reads in the row. No function reads a message to decide
anything: what a run is doing is its status and its counters, never its text.

    queued ──launch──► launching ──seen running──► running ──exit 0──► succeeded
      ▲  │                 │   ╲                     │  ╲
      │  hold ► held        │    no start in time     │   no heartbeat ► stalled ──gone──┐
      │  (run ► queued)     ▼                         ▼                                 │
      └──── retrying ◄── crash (exit ≠ 0, lost, failed launch, time out) ◄──────────────┘
                             │ retries spent, a no-retry exit code, a time limit
                             ▼
                           failed          stop / row deleted (any) ──► stopped
    a host that is silent: launching/running ──► lost ──back──► running (or crash)
    no host could ever take it: queued ──► unplaceable ──a host fits──► queued
    the host refused the launch (a GPU claimed): launching ──► queued (no crash)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from .model import Run, Status


def queue(run: Run) -> None:
    run.status, run.message = Status.QUEUED, ""


def hold(run: Run) -> None:
    run.status, run.message = Status.HELD, "held: the row's action is hold"


def unplaceable(run: Run, reason: str) -> None:
    run.status, run.message = Status.UNPLACEABLE, reason


def invalid(run: Run, reason: str) -> None:
    run.status, run.message = Status.INVALID, reason


def launch(run: Run, host: str, accelerators: tuple[str, ...], now: datetime) -> None:
    """A new attempt is sent. A retry keeps saying why it is one (by its crash count)."""
    run.attempt += 1
    run.status, run.host, run.accelerators = Status.LAUNCHING, host, accelerators
    run.attempt_started_at = now
    run.started_at = run.started_at or now
    run.finished_at, run.next_attempt_at, run.link.kept_cells = None, None, {}
    if run.crashes == 0:
        run.message = ""


def refused(run: Run, reason: str) -> None:
    """The host refused the launch before starting anything (a GPU claimed by another
    attempt, docs/shared-gpus.md): waiting again, no crash counted; the attempt number
    it used is not used again."""
    run.status, run.message = Status.QUEUED, f"waiting: the launch was refused: {reason}"
    run.host, run.accelerators = None, ()


def running(run: Run) -> None:
    if run.status != Status.RUNNING:
        run.message = ""
    run.status = Status.RUNNING


def succeed(run: Run, now: datetime, note: str = "") -> None:
    run.status, run.message, run.finished_at = Status.SUCCEEDED, note, now


def fail(run: Run, now: datetime, reason: str) -> None:
    """Final: no retry can help (a usage error, a time limit) or none is left."""
    run.status, run.message, run.finished_at = Status.FAILED, reason, now


def stall(run: Run, silent_s: float) -> None:
    run.status = Status.STALLED
    run.message = f"stalled: no heartbeat for {int(silent_s)}s; killed"
    run.stall_reason = run.message


def lose(run: Run, why: str) -> None:
    """Its host is silent: the run may still be alive there."""
    run.status, run.message = Status.LOST, why


def found_again(run: Run) -> None:
    """A silent host answers before the attempt showed up: back to waiting for it."""
    run.status = Status.LAUNCHING


def stop(run: Run, now: datetime, reason: str) -> None:
    run.status, run.message, run.finished_at = Status.STOPPED, reason, now


def crash(run: Run, now: datetime, reason: str, backoff_s: float, backoff_max_s: float) -> None:
    """A crash, hang or loss: retry with exponential backoff until retries are spent."""
    run.crashes += 1
    if run.crashes > run.link.retries:
        fail(run, now, f"no retries left ({run.link.retries} allowed) after {reason}")
        return
    delay = min(backoff_s * 2 ** (run.crashes - 1), backoff_max_s)
    run.status = Status.RETRYING
    run.next_attempt_at = now + timedelta(seconds=delay)
    run.message = f"retry {run.crashes}/{run.link.retries} in {int(delay)}s after {reason}"
