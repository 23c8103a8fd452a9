"""Notifications: a message to a Slack-compatible webhook and/or a local command when runs end
or sweeps finish (`[notify]`, docs/notifications.md).

The daemon calls, once per cycle, `notifier.cycle(notifier.notices(before, after,
experiments))`. What this module promises:

- **Never blocks the cycle.** `cycle()` only formats one message and puts it on a bounded
  queue; one background thread sends it. A full queue (the webhook hangs) drops the message
  with a log line.
- **Batched.** One message per cycle at most, listing up to `MAX_LISTED` notices and
  "… and K more".
- **Rate-limited.** At most `max_per_hour` messages in any hour; beyond that a message is
  dropped with one log line saying how many notices were dropped, and the next message sent
  says so too.
- **Retried, then dropped.** A failed send (network error, timeout, HTTP 5xx or 429, a
  command exiting non-zero) is tried `ATTEMPTS` times with a doubling backoff, then dropped
  with a log line. A 4xx answer is not retried (the URL or the payload is wrong).
- **Best effort.** Nothing is stored: messages not sent when the daemon exits (`close()`
  waits a few seconds) are lost.
- **The webhook URL is a credential.** Only its host is ever logged; error texts are
  scrubbed of it.
- **Argv, never shell.** The command gets the message as its last argv item.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .config import NotifyConfig, SheetConfig
from .model import FINAL_STATUSES, Experiment, Run, param_argv

log = logging.getLogger(__name__)

SWEEP_FINISHED = "sweep-finished"
MAX_LISTED = 10  # notices listed in one message; the rest are counted ("… and K more")
NOTICE_CHARS = 300  # one notice's line is cut to this
QUEUE_SIZE = 32  # messages waiting for the sender thread
ATTEMPTS = 3  # tries per message and destination
BACKOFF_S = 2.0  # before the second try; doubles
CLOSE_TIMEOUT_S = 5.0
HOUR_S = 3600.0
OUTPUT_CHARS = 300  # of a failing command's output, in the log
FINAL = frozenset(s.value for s in FINAL_STATUSES)

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Notice:
    """One thing to announce.

    `event` is the `[notify] on` value it matched: a final status ("failed") or
    "sweep-finished". For a sweep, `run_id` is the sweep's id (`sweep-…`) and `message`
    counts its children's statuses."""

    event: str
    run_id: str
    row: int = 0
    job: str = ""
    params: tuple[tuple[str, str], ...] = ()
    message: str = ""


@dataclass(frozen=True)
class Message:
    """What one cycle sends: the same text to every destination."""

    text: str
    notices: int  # how many notices it stands for (logged when it is dropped)


# -- which notices a cycle produces -----------------------------------------------------------


def _current(run_id: str, runs: Mapping[str, Run]) -> Run | None:
    """The run a row's id stands for: a rerun's replacement, if any (`replaced_by`)."""
    run = runs.get(run_id)
    seen = {run_id}
    while run is not None and run.link.replaced_by and run.link.replaced_by in runs:
        if run.link.replaced_by in seen:
            break
        seen.add(run.link.replaced_by)
        run = runs[run.link.replaced_by]
    return run


def _child_status(exp: Experiment, runs: Mapping[str, Run]) -> str | None:
    """A sweep child's status by its run; an invalid row without a run counts as `invalid`
    (it will not run); None while the row has no run yet."""
    run = _current(exp.run_id, runs) if exp.run_id else None
    if run is not None:
        return run.status.value
    return "invalid" if exp.error and not exp.run_id else None


def _finished(children: list[Experiment], runs: Mapping[str, Run]) -> bool:
    statuses = [_child_status(c, runs) for c in children]
    return all(s is not None and s in FINAL for s in statuses)


def derive_notices(
    before: Mapping[str, Run],
    after: Mapping[str, Run],
    experiments: Iterable[Experiment],
    on: Iterable[str],
    announced: set[str],
    open_sweeps: set[str],
) -> list[Notice]:
    """The notices of one cycle, from the runs before it, the runs after it and the rows read.

    - A run whose status became one of the `on` statuses this cycle (a run the cycle created,
      such as a `duplicate`, counts; a run rebuilt from the sheet or a host after the state
      was lost does not: its end may be old news).
    - A sweep (its children share the `sweep` cell) all of whose child rows are final now,
      and were not before this cycle or were seen unfinished earlier in this daemon's life:
      announced once per sweep (`announced` keeps the ids; `open_sweeps` the unfinished ones).

    Runs come first, by row, then sweeps, by row."""
    wanted = set(on)
    experiments = list(experiments)
    rows = {e.run_id: e.row for e in experiments if e.run_id}
    notices: list[Notice] = []
    for run in after.values():
        status = run.status.value
        if status not in wanted or status not in FINAL:
            continue
        old = before.get(run.run_id)
        if old is None and run.link.in_sheet:
            continue  # rebuilt, not new: its end may be old news
        if old is not None and old.status == run.status:
            continue
        notices.append(
            Notice(
                status,
                run.run_id,
                rows.get(run.run_id, run.link.row),
                run.spec.job,
                run.spec.params,
                run.message,
            )
        )
    notices.sort(key=lambda n: (n.row, n.run_id))
    if SWEEP_FINISHED not in wanted:
        return notices
    finished: list[Notice] = []
    sweeps: dict[str, list[Experiment]] = {}
    for exp in experiments:
        if exp.sweep_id and not exp.is_sweep:
            sweeps.setdefault(exp.sweep_id, []).append(exp)
    parents = {e.run_id: e for e in experiments if e.is_sweep and e.run_id}
    for sweep_id, children in sweeps.items():
        if sweep_id in announced:
            continue
        if not _finished(children, after):
            open_sweeps.add(sweep_id)
            continue
        if sweep_id not in open_sweeps and _finished(children, before):
            continue  # finished before this daemon saw it: not news
        announced.add(sweep_id)
        open_sweeps.discard(sweep_id)
        counts = Counter(_child_status(c, after) for c in children)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda x: -x[1]))
        parent = parents.get(sweep_id)
        row = parent.row if parent is not None else min(c.row for c in children)
        finished.append(
            Notice(
                SWEEP_FINISHED,
                sweep_id,
                row,
                children[0].job,
                (),
                f"{len(children)} runs: {summary}",
            )
        )
    return notices + sorted(finished, key=lambda n: (n.row, n.run_id))


# -- the message ------------------------------------------------------------------------------


def _one_line(text: str, limit: int = NOTICE_CHARS) -> str:
    """Cell and log text on one line, without control characters, bounded."""
    text = _SPACE.sub(" ", _CONTROL.sub("", text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(notice: Notice) -> str:
    """One notice as one line, e.g.
    `failed: row 7, digits --lr 0.5 (run 1a2b3c4d-k7m2qx): exit code 1`."""
    what = "sweep finished" if notice.event == SWEEP_FINISHED else notice.event
    task = " ".join([notice.job, *param_argv(notice.params)]).strip()
    where = f"row {notice.row}" if notice.row else ""
    head = ", ".join(x for x in (where, task) if x)
    kind = "sweep" if notice.event == SWEEP_FINISHED else "run"
    line = f"{what}: {head} ({kind} {notice.run_id})" if head else f"{what}: {kind} {notice.run_id}"
    if notice.message:
        line += f": {notice.message}"
    return _one_line(line)


def compose(notices: list[Notice], label: str = "", dropped: int = 0, max_per_hour: int = 0) -> str:
    """The text of one cycle's message: a summary line, up to MAX_LISTED notices, the rest
    counted, and how many notices the rate limit dropped since the last message."""
    counts = Counter("sweep finished" if n.event == SWEEP_FINISHED else n.event for n in notices)
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    name = f"sheetrunner ({_one_line(label, 80)})" if label else "sheetrunner"
    lines = [f"{name}: {summary}"]
    lines += [f"• {describe(n)}" for n in notices[:MAX_LISTED]]
    if len(notices) > MAX_LISTED:
        lines.append(f"… and {len(notices) - MAX_LISTED} more")
    if dropped:
        lines.append(
            f"({dropped} earlier notices were dropped: at most {max_per_hour} messages "
            f"an hour are sent)"
        )
    return "\n".join(lines)


def slack_escape(text: str) -> str:
    """Slack reads <...> as links and mentions (`<!channel>`): row text is shown as typed."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def sheet_label(sheet: SheetConfig) -> str:
    """Which sheet a message is about, for people with several: the workbook's file name or
    the worksheet's name (never a Google Sheet's URL)."""
    name = sheet.path.name if sheet.path is not None else ""
    if sheet.worksheet:
        name = f"{name} › {sheet.worksheet}" if name else sheet.worksheet
    return name


# -- sending ----------------------------------------------------------------------------------


class SendError(Exception):
    """A failed attempt; `retry` False when trying again cannot help (HTTP 4xx)."""

    def __init__(self, text: str, retry: bool = True):
        super().__init__(text)
        self.retry = retry


class Notifier:
    """Announces what the daemon's cycles did; see the module docstring for the promises.

    A notifier of a config without webhook or command does nothing (and starts no thread),
    so the daemon may always build one."""

    def __init__(
        self,
        config: NotifyConfig,
        label: str = "",
        *,
        clock: Callable[[], float] = time.monotonic,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        queue_size: int = QUEUE_SIZE,
    ):
        self.config = config
        self.label = label
        self.clock = clock
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self._sent_at: deque[float] = deque()  # when each recent message was accepted
        self._dropped = 0  # notices the rate limit dropped since the last message
        self._announced: set[str] = set()  # sweeps announced (once per daemon life)
        self._open_sweeps: set[str] = set()  # sweeps seen unfinished
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=max(1, queue_size))
        self._closing = threading.Event()
        self._busy = threading.Event()  # the sender holds a message
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener()
        self._secret = _secret_parts(config.webhook)
        if not config.enabled:
            return
        self._thread = threading.Thread(
            target=self._send_loop, name="sheetrunner-notify", daemon=True
        )
        self._thread.start()
        where = []
        if config.webhook:
            where.append(f"webhook to {config.webhook_host}")
            if config.webhook.lower().startswith("http://"):
                log.warning(
                    "notify.webhook (host %s) uses plain http: the URL, a credential, "
                    "crosses the network unencrypted; use https",
                    config.webhook_host,
                )
        if config.command:
            where.append(f"command {config.command[0]}")
        log.info(
            "notifications: %s; on %s; at most %d messages an hour",
            " and ".join(where),
            ", ".join(config.on),
            config.max_per_hour,
        )

    # -- called by the daemon -----------------------------------------------------------------

    def notices(
        self,
        before: Mapping[str, Run],
        after: Mapping[str, Run],
        experiments: Iterable[Experiment] | None,
    ) -> list[Notice]:
        """This cycle's notices: runs `before` and `after` it, and the rows read (None or []
        when the sheet could not be read: then no sweep is judged)."""
        if not self.config.enabled:
            return []
        try:
            return derive_notices(
                before, after, experiments or [], self.config.on, self._announced, self._open_sweeps
            )
        except Exception:  # a notification must never take a cycle down
            log.exception("no notifications this cycle (a bug in sheetrunner.notify)")
            return []

    def cycle(self, notices: list[Notice]) -> None:
        """Queue one message for this cycle's notices; returns at once, never raises."""
        if not notices or not self.config.enabled or self._closing.is_set():
            return
        try:
            self._offer(notices)
        except Exception:  # a notification must never take a cycle down
            log.exception("notification not sent (a bug in sheetrunner.notify)")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued (one try each, no backoff), waiting at most `timeout_s`."""
        if self._thread is None or self._closing.is_set():
            return
        self._closing.set()
        self._thread.join(timeout_s)
        left = self._queue.qsize() + (1 if self._busy.is_set() else 0)
        if self._thread.is_alive() and left:
            log.warning(
                "%d notification message(s) not sent at exit: the destination did not "
                "answer within %.0f s",
                left,
                timeout_s,
            )
        if self._dropped:
            log.warning(
                "%d notices were dropped by the rate limit (%d messages an hour) and "
                "never reported",
                self._dropped,
                self.config.max_per_hour,
            )

    # -- rate limit and queue -----------------------------------------------------------------

    def _offer(self, notices: list[Notice]) -> None:
        now = self.clock()
        while self._sent_at and now - self._sent_at[0] >= HOUR_S:
            self._sent_at.popleft()
        if len(self._sent_at) >= self.config.max_per_hour:
            self._dropped += len(notices)
            log.warning(
                "notification dropped: %d notice(s) over the rate limit of %d messages "
                "an hour (%d dropped since the last message sent)",
                len(notices),
                self.config.max_per_hour,
                self._dropped,
            )
            return
        text = compose(notices, self.label, self._dropped, self.config.max_per_hour)
        try:
            self._queue.put_nowait(Message(text, len(notices)))
        except queue.Full:
            log.warning(
                "notification dropped: %d notice(s); %d messages are already waiting "
                "for a destination that does not answer",
                len(notices),
                self._queue.maxsize,
            )
            return
        self._sent_at.append(now)
        self._dropped = 0

    # -- the sender thread --------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            try:
                message = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            self._busy.set()
            try:
                self._deliver(message)
            except Exception:  # the thread must outlive any one message
                log.error("notification dropped: unexpected error (a bug in sheetrunner.notify)")
            finally:
                self._busy.clear()

    def _deliver(self, message: Message) -> None:
        if self.config.webhook:
            self._with_retries(
                f"webhook {self.config.webhook_host}", message, lambda: self._post(message.text)
            )
        if self.config.command:
            self._with_retries(
                f"command {self.config.command[0]}",
                message,
                lambda: self._run_command(message.text),
            )

    def _with_retries(self, target: str, message: Message, send: Callable[[], None]) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                send()
            except SendError as exc:
                error = self._scrub(str(exc))
                last = attempt == self.attempts or not exc.retry or self._closing.is_set()
                if last:
                    log.warning(
                        "notification dropped after %d attempt(s) to %s: %s (%d notice(s))",
                        attempt,
                        target,
                        error,
                        message.notices,
                    )
                    return
                log.info(
                    "notification to %s failed (attempt %d of %d): %s; retrying in %.1f s",
                    target,
                    attempt,
                    self.attempts,
                    error,
                    delay,
                )
                if self._closing.wait(delay):
                    log.warning(
                        "notification dropped at exit after %d attempt(s) to %s: %s",
                        attempt,
                        target,
                        error,
                    )
                    return
                delay *= 2
            else:
                log.debug("notification sent to %s (%d notice(s))", target, message.notices)
                return

    def _post(self, text: str) -> None:
        body = json.dumps({"text": slack_escape(text)}).encode("utf-8")
        request = urllib.request.Request(
            self.config.webhook or "",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "sheetrunner",
            },
        )
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as answer:
                answer.read(4096)
        except urllib.error.HTTPError as exc:
            exc.close()
            retry = exc.code >= 500 or exc.code in (408, 429)
            raise SendError(
                f"HTTP {exc.code}" + ("" if retry else " (not retried: check [notify] webhook)"),
                retry,
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            raise SendError(
                f"{type(reason).__name__}: {reason}"
                if isinstance(reason, Exception)
                else str(reason)
            ) from None
        except TimeoutError:
            raise SendError(f"no answer within {self.config.timeout_s:g} s") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise SendError(f"{type(exc).__name__}: {exc}") from None

    def _run_command(self, text: str) -> None:
        argv = [*self.config.command, _CONTROL.sub("", text.replace("\0", ""))]
        cwd = str(self.config.workdir) if self.config.workdir else None
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise SendError(
                f"cannot start it: {exc.strerror or exc}",
                retry=not isinstance(exc, FileNotFoundError | PermissionError),
            ) from None
        try:
            output, _ = proc.communicate(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise SendError(f"still running after {self.config.timeout_s:g} s: killed") from None
        if proc.returncode != 0:
            tail = _one_line(output.decode("utf-8", "replace")[-OUTPUT_CHARS:], OUTPUT_CHARS)
            raise SendError(f"exit status {proc.returncode}" + (f": {tail}" if tail else ""))

    def _scrub(self, text: str) -> str:
        """An error text without the webhook's secret parts, whatever a library put in it."""
        for part in self._secret:
            text = text.replace(part, "<webhook>")
        return text


def _secret_parts(url: str | None) -> list[str]:
    """The webhook URL and its path and query: never in a log line."""
    if not url:
        return []
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    found = [url, tail if len(tail) > 1 else "", parts.query]
    return sorted((p for p in found if p and len(p) > 1), key=len, reverse=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass
