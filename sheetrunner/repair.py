"""Bringing back preempted machines: `[[hosts]] repair`, run in the background.

A host with `repair = [argv]` that has been unreachable for `repair_after` seconds gets its
repair command run on the daemon's machine (argv, never a shell; in its own session, so a
Ctrl-C in the daemon's terminal does not reach it), in a thread of its own: the cycle never
waits for it. A try is bounded in time (`REPAIR_TIMEOUT_S`: SIGTERM to its process group,
SIGKILL shortly after); tries are spaced by a backoff that doubles from `REPAIR_BACKOFF_S`
up to `REPAIR_BACKOFF_MAX_S`. Nothing here decides about runs: a repaired host simply
answers the next probe again (the daemon forgets its SSH reconnect backoff at once, the agent
is uploaded again if the new machine lacks it, and the core sees a new boot id, which proves
the host's old attempts gone).

What each host's repair is doing is kept in `<state_dir>/repairs.json`, for `sheetrunner
pool` and the pool tab. A daemon that stops while a repair runs stops it too (SIGTERM to its
process group); the next daemon starts it again once the host has been unreachable for
`repair_after` seconds as it counts them (from its own first failed probe). Repair commands
should therefore be safe to run again (`start` a stopped VM, re-create a deleted one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .config import HostConfig

log = logging.getLogger(__name__)

REPAIR_TIMEOUT_S = 600.0  # one try; then SIGTERM to its process group, SIGKILL after
REPAIR_KILL_GRACE_S = 5.0
REPAIR_BACKOFF_S = 60.0  # between tries: 60 s, 120 s, 240 s, ... capped
REPAIR_BACKOFF_MAX_S = 3600.0
STATE_FILE = "repairs.json"
LOG_DIR = "repair"
RESULT_CHARS = 300  # the end of a failed try's output, in its result

REPAIRING = "repairing"  # a try runs now
WAITING = "waiting"  # the last try did not bring the host back; the next after a backoff


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RepairState:
    """One host's repair: its tries so far, the running one, the last result."""

    host: str
    tries: int = 0
    last_try: datetime | None = None  # when the last (or running) try started
    last_result: str = ""  # "exit 0", "exit 1: <end of its output>", "timed out ..."
    ok: bool | None = None  # how the last finished try ended
    next_try: datetime | None = None
    pid: int | None = None  # the running try's process
    running: bool = False
    ended: bool = False  # a try ended since the daemon last asked (`Repairs.tick`)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "state": REPAIRING if self.running else WAITING,
            "tries": self.tries,
            "last_try": self.last_try.isoformat() if self.last_try else None,
            "last_result": self.last_result,
            "ok": self.ok,
            "next_try": self.next_try.isoformat() if self.next_try and not self.running else None,
            "pid": self.pid if self.running else None,
        }


class Repairs:
    """The repairs of one daemon's hosts; `tick` once a cycle, after the probes."""

    def __init__(
        self,
        state_dir: Path,
        workdir: Path,
        timeout_s: float = REPAIR_TIMEOUT_S,
        backoff_s: float = REPAIR_BACKOFF_S,
        backoff_max_s: float = REPAIR_BACKOFF_MAX_S,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.state_dir = Path(state_dir)
        self.workdir = Path(workdir)
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, RepairState] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False
        self._written: str | None = None

    def tick(
        self, hosts: Iterable[HostConfig], down_since: Mapping[str, datetime], now: datetime
    ) -> list[str]:
        """Start the repairs that are due, forget those of hosts that answer again. Returns the
        hosts whose try ended since the last tick (the daemon reconnects to them at once)."""
        ended: list[str] = []
        with self._lock:
            configured = {h.name: h for h in hosts}
            for name, state in list(self._states.items()):
                if state.ended:
                    state.ended = False
                    ended.append(name)
                if state.running:
                    continue
                if name not in configured or not configured[name].repair:
                    del self._states[name]
                elif name not in down_since:
                    log.info("host=%s reachable again after %d repair tries", name, state.tries)
                    del self._states[name]
            for host in configured.values():
                since = down_since.get(host.name)
                if not host.repair or since is None or self._closing:
                    continue
                known = self._states.get(host.name)
                if known is not None and (
                    known.running or (known.next_try is not None and now < known.next_try)
                ):
                    continue
                if known is None and (now - since).total_seconds() < host.repair_after_s:
                    continue
                self._start(host, known or RepairState(host.name), since, now)
            self._save()
        return ended

    def _start(self, host: HostConfig, state: RepairState, since: datetime, now: datetime) -> None:
        state.tries += 1
        state.last_try, state.next_try, state.running = now, None, True
        self._states[host.name] = state
        down_s = (now - since).total_seconds()
        log.warning(
            "host=%s unreachable for %.0f s: repair try %d: %s",
            host.name,
            down_s,
            state.tries,
            " ".join(host.repair),
        )
        thread = threading.Thread(
            target=self._run, args=(host, state), name=f"repair-{host.name}", daemon=True
        )
        self._threads[host.name] = thread
        thread.start()

    def _run(self, host: HostConfig, state: RepairState) -> None:
        """One try, in its own thread: the command in its own session, bounded in time."""
        log_dir = self.state_dir / LOG_DIR
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            out_path = log_dir / f"{host.name}.log"
            with open(out_path, "wb") as out:
                proc = subprocess.Popen(
                    list(host.repair),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,  # a Ctrl-C in the daemon's terminal is not for it
                )
                with self._lock:
                    state.proc, state.pid = proc, proc.pid
                    self._save()
                ok, result = self._wait(proc, out_path)
        except OSError as exc:
            ok, result = False, f"could not start {host.repair[0]}: {exc}"
        self._finish(host, state, ok, result)

    def _wait(self, proc: subprocess.Popen, out_path: Path) -> tuple[bool, str]:
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            return False, f"timed out after {self.timeout_s:g} s, killed{_tail(out_path)}"
        if self._closing and code != 0:
            return False, "stopped with the daemon"
        if code == 0:
            return True, "exit 0"
        return False, f"exit {code}{_tail(out_path)}"

    def _finish(self, host: HostConfig, state: RepairState, ok: bool, result: str) -> None:
        now = self.clock()
        with self._lock:
            state.running, state.proc, state.pid = False, None, None
            state.ok, state.last_result, state.ended = ok, result, True
            wait = min(self.backoff_max_s, self.backoff_s * 2 ** (state.tries - 1))
            state.next_try = now + timedelta(seconds=wait)
            self._save()
        (log.info if ok else log.warning)(
            "host=%s repair try %d ended: %s; %s",
            host.name,
            state.tries,
            result,
            "it rejoins once a probe reaches it"
            if ok
            else f"next try in {wait:.0f} s if it is still unreachable",
        )

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: s.as_json() for name, s in self._states.items()}

    def _save(self) -> None:
        """`<state_dir>/repairs.json`, for `pool` (a separate process); under the lock."""
        text = json.dumps({n: s.as_json() for n, s in sorted(self._states.items())}, indent=1)
        if text == self._written:
            return
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.state_dir / STATE_FILE, text.encode())
        except OSError as exc:
            log.warning("could not write %s: %s", self.state_dir / STATE_FILE, exc)
            return
        self._written = text

    def close(self, wait_s: float = REPAIR_KILL_GRACE_S + 1) -> None:
        """Stop the running tries (the next daemon starts them again after repair_after)."""
        with self._lock:
            self._closing = True
            running = [s for s in self._states.values() if s.running and s.proc is not None]
        for state in running:
            log.info(
                "host=%s: stopping its repair try %d with the daemon; the next daemon starts it "
                "again once the host has been unreachable for repair_after",
                state.host,
                state.tries,
            )
            if state.proc is not None:
                _stop_group(state.proc, wait=False)
        for thread in list(self._threads.values()):
            thread.join(wait_s)
        with self._lock:
            self._states.clear()
            self._save()


def _stop_group(proc: subprocess.Popen, wait: bool = True) -> None:
    """SIGTERM to the command's process group, SIGKILL after a short grace."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=REPAIR_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if wait:
            proc.wait()


def _tail(path: Path) -> str:
    """The end of a try's output, one line, for its result."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - RESULT_CHARS))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    text = " ".join(text.split())
    return f": {text}" if text else ""


def load(state_dir: Path) -> dict[str, dict[str, Any]]:
    """What the daemon last wrote of its repairs, for `pool`. A try whose process is gone (a
    daemon that died mid-repair) shows as interrupted rather than repairing forever."""
    try:
        found = json.loads((Path(state_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    states: dict[str, dict[str, Any]] = {}
    for name, entry in found.items():
        if not isinstance(entry, dict):
            continue
        pid = entry.get("pid")
        if entry.get("state") == REPAIRING and isinstance(pid, int) and not _alive(pid):
            entry = {**entry, "state": WAITING, "last_result": "interrupted", "pid": None}
        states[str(name)] = entry
    return states


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
