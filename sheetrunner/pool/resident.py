"""The resident agent: one long-lived agent process per host, asked over one channel.

An exec per call costs a new SSH session and a new Python process on the host
every cycle (most of a warm probe's time and nearly all its host CPU). The
resident agent is `agent.pyz serve`, started once per connection: each call is
one JSON line out and one JSON line back on the same channel, answered by the
same command functions an exec runs, in a process that keeps what never
changes about the host (boot id, GPU names and UUIDs, NVML loaded).

One request at a time per host: a lock serialises them, and a call that finds
the lock held (a launch while the probe is in flight) takes the exec path
instead of waiting. Every request keeps its caller's deadline, and its receipt
must come within the SSH connect timeout, as opening a channel for an exec
must (a frozen host is found as fast on either path); on a timeout
the process is dropped (a hung agent never holds the cycle twice), and when it
dies or its channel closes, the next call starts another. A host that cannot
be reached fails the call as an exec would; only an agent that does not start
(an old Python, a transport without streams) sends calls to the exec path. After a failed
start, the start is tried again after `RETRY_S`.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from ..errors import CommandTimeout, TransportError
from .transport import CommandResult

log = logging.getLogger(__name__)

RETRY_S = 60.0  # after a failed start, the exec path alone for this long
START_TIMEOUT_S = 15.0  # the agent's first line (its name) must come within this
# Commands that only read: asked again by exec when the resident process died under them.
READ_ONLY = frozenset({"probe", "facts", "programs", "tail", "history"})


class Stream(Protocol):
    # How long a request's receipt may take (the SSH connect timeout: the bound on opening
    # a channel for an exec); None: the request's own deadline.
    ack_timeout_s: float | None

    @property
    def alive(self) -> bool: ...

    def write(self, data: bytes, deadline: float) -> None: ...

    def read_line(self, deadline: float) -> bytes: ...

    def close(self) -> None: ...


class Unavailable(Exception):
    """No resident process answers now; the caller asks by exec (nothing was sent)."""


class ResidentAgent:
    """The serving agent on one host, started on first use and again after it ends."""

    def __init__(self, host: str, transport: object, argv: Sequence[str], expected_name: str):
        self.host = host
        self.transport = transport
        self.argv = list(argv)
        self.expected_name = expected_name
        self._lock = threading.Lock()
        self._stream: Stream | None = None
        self._retry_at = 0.0
        self._ids = 0
        self.requests = 0  # answered over the resident channel (counted for the bench)
        self.starts = 0
        self.pid: int | None = None  # the serving process's pid on the host, from its first line

    @property
    def supported(self) -> bool:
        return hasattr(self.transport, "open_stream")

    def call(self, args: list[str], stdin: bytes, timeout_s: float) -> CommandResult:
        """The command's result as an exec would give it. Unavailable: not sent, use exec."""
        if not self._lock.acquire(blocking=False):
            raise Unavailable("busy")
        try:
            deadline = time.monotonic() + timeout_s
            stream = self._ready(deadline)
            self._ids += 1
            request = {"id": self._ids, "argv": args, "stdin": stdin.decode("utf-8")}
            stream.write(json.dumps(request).encode() + b"\n", deadline)
            try:
                ack_by = min(deadline, time.monotonic() + (stream.ack_timeout_s or timeout_s))
                _ = stream.read_line(ack_by)  # received: the host answers (a frozen one won't)
                answer = json.loads(stream.read_line(deadline))
            except CommandTimeout:
                log.warning("host=%s resident agent: %s timed out; dropped", self.host, args[0])
                raise
            except TransportError as exc:
                if args[0] in READ_ONLY:  # nothing changed on the host: ask again by exec
                    raise Unavailable(str(exc)) from exc
                raise
            if not isinstance(answer, dict) or answer.get("id") != self._ids:
                self._drop()
                raise TransportError(f"{self.host}: the resident agent answered out of turn")
            self.requests += 1
            return _result(answer)
        except UnicodeDecodeError as exc:
            raise Unavailable("stdin is not text") from exc
        finally:
            self._lock.release()

    def _ready(self, deadline: float) -> Stream:
        """The live stream, starting the agent if none runs (within RETRY_S of a failed
        start: Unavailable)."""
        stream = self._stream
        if stream is not None and stream.alive:
            return stream
        self._drop()
        if not self.supported or time.monotonic() < self._retry_at:
            raise Unavailable("not started")
        # A host that cannot be reached raises here, as an exec would (no second wait).
        stream = self.transport.open_stream(  # type: ignore[attr-defined]
            self.argv, timeout_s=min(START_TIMEOUT_S, max(0.1, deadline - time.monotonic()))
        )
        try:
            hello = json.loads(stream.read_line(min(deadline, time.monotonic() + START_TIMEOUT_S)))
            if not isinstance(hello, dict) or hello.get("hello") != self.expected_name:
                stream.close()
                raise TransportError(f"answered as {hello!r}, not {self.expected_name}")
        except (TransportError, ValueError) as exc:
            stream.close()
            self._retry_at = time.monotonic() + RETRY_S
            log.info("host=%s resident agent did not start (%s); exec for now", self.host, exc)
            raise Unavailable(str(exc)) from exc
        self.starts += 1
        self.pid = hello.get("pid") if isinstance(hello.get("pid"), int) else None
        log.info("host=%s resident agent %s started", self.host, self.expected_name)
        self._stream = stream
        return stream

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def close(self) -> None:
        """End the resident process (its stdin closes); the next call starts another."""
        with self._lock:
            self._drop()
            self._retry_at = 0.0


def _result(answer: dict) -> CommandResult:
    if "out_b64" in answer:
        out = base64.b64decode(answer["out_b64"])
    else:
        out = str(answer.get("out") or "").encode("utf-8")
    code = answer.get("exit")
    return CommandResult(
        code if isinstance(code, int) else 1, out, str(answer.get("err") or "").encode("utf-8")
    )
