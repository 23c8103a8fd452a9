"""Deadlines for SSH calls: a shared watchdog that closes what a late call waits on.

Several paramiko waits (exec_command, recv_exit_status, a blocked write, the
handshake) take no timeout at all; closing the connection is the only way to
wake them. This module keeps that mechanism apart from the transport: callers
arm an alarm with a deadline and a close callback, and cancel it when done.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable


class DeadlinePassed(Exception):
    """The call's own loop saw its deadline pass."""


def remaining(deadline: float) -> float:
    """Seconds left until `deadline` (time.monotonic()), never below a small positive floor."""
    return max(0.01, deadline - time.monotonic())


class Alarm:
    """One deadline registered with the watchdog; fires at most once."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._state = "armed"

    @property
    def fired(self) -> bool:
        return self._state == "fired"

    def cancel(self) -> None:
        with self._lock:
            if self._state == "armed":
                self._state = "cancelled"

    def fire(self) -> None:
        with self._lock:
            if self._state != "armed":
                return
            self._state = "fired"
        # The callback closes sockets and joins paramiko threads: keep it off the
        # watchdog thread so one slow close cannot delay every other deadline.
        threading.Thread(target=self._callback, name="sheetrunner-ssh-expire", daemon=True).start()


class Watchdog:
    """Fires callbacks at wall-clock deadlines from one shared thread.

    Closing the Transport is the only way to wake paramiko waits that have no
    timeout; one thread for all hosts instead of a Timer thread per call keeps
    a 500-host probe from starting 500 extra threads.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Alarm]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, callback: Callable[[], None]) -> Alarm:
        """Call `callback` (in its own thread) once time.monotonic() passes `deadline`."""
        alarm = Alarm(callback)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), alarm))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="sheetrunner-ssh-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return alarm

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, alarm = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            alarm.fire()


WATCHDOG = Watchdog()
