"""Notifications (sheetrunner/notify.py): which notices a cycle produces, and the sending
against a real local HTTP server (JSON body, batching, rate limit, retries, a hanging server,
the webhook never logged) and through a real command (the message is one argv item)."""

from __future__ import annotations

import json
import logging
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sheetrunner.config import NotifyConfig
from sheetrunner.model import Experiment, Run, Status
from sheetrunner.notify import MAX_LISTED, Notice, Notifier, compose, derive_notices
from tests.helpers import make_run

SECRET_PATH = "/services/T0001/B0002/s3cr3tT0k3nXYZ"
LOGGER = "sheetrunner.notify"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


# -- a real webhook ---------------------------------------------------------------------------


class Hook:
    """An HTTP server on 127.0.0.1 that records every POST; it answers the codes in
    `answers` in turn (then 200), or hangs while `hang` is set."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answers: list[int] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        self.in_flight = threading.Event()  # a request is being held by `hang`
        self.lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with hook.lock:
                    hook.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": body})
                    code = hook.answers.pop(0) if hook.answers else 200
                if hook.hang.is_set():
                    hook.in_flight.set()
                    hook.release.wait(30)
                    hook.in_flight.clear()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                try:
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def texts(self) -> list[str]:
        with self.lock:
            return [json.loads(r["body"])["text"] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    server = Hook()
    yield server
    server.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def notifier(url: str | None = None, command: tuple[str, ...] = (), **kwargs) -> Notifier:
    config = NotifyConfig(webhook=url, command=command,
                          max_per_hour=kwargs.pop("max_per_hour", 30),
                          timeout_s=kwargs.pop("timeout_s", 5.0),
                          workdir=kwargs.pop("workdir", None))
    kwargs.setdefault("backoff_s", 0.01)
    return Notifier(config, **kwargs)


def failed(i: int = 1, message: str = "exit code 1: ValueError: lr too big") -> Notice:
    return Notice("failed", f"1a2b3c4d-run{i:03d}", row=i + 1, job="digits",
                  params=(("lr", "0.5"), ("epochs", "3")), message=message)


# -- what is sent -----------------------------------------------------------------------------


def test_the_webhook_gets_slack_json_with_the_notice(hook: Hook) -> None:
    n = notifier(hook.url)
    n.cycle([failed(6)])
    wait_for(lambda: len(hook.requests) == 1)
    n.close()
    request = hook.requests[0]
    assert request["path"] == SECRET_PATH
    assert request["headers"]["Content-Type"].startswith("application/json")
    body = json.loads(request["body"])
    assert list(body) == ["text"]
    assert body["text"] == (
        "sheetrunner: 1 failed\n"
        "• failed: row 7, digits --lr 0.5 --epochs 3 (run 1a2b3c4d-run006): "
        "exit code 1: ValueError: lr too big")


def test_row_text_cannot_mention_the_channel_or_link(hook: Hook) -> None:
    n = notifier(hook.url)
    n.cycle([failed(1, message="<!channel> see <http://evil|here> & more")])
    wait_for(lambda: len(hook.requests) == 1)
    n.close()
    (text,) = hook.texts()
    assert "&lt;!channel&gt; see &lt;http://evil|here&gt; &amp; more" in text
    assert "<" not in text and ">" not in text


def test_one_message_per_cycle_lists_at_most_ten_and_counts_the_rest(hook: Hook) -> None:
    n = notifier(hook.url)
    sweep = Notice("sweep-finished", "sweep-1a2b3c4d", row=1, job="digits",
                   message="3 runs: 2 succeeded, 1 failed")
    n.cycle([failed(i) for i in range(14)] + [sweep])
    n.cycle([failed(99)])
    wait_for(lambda: len(hook.requests) == 2)
    n.close()
    first, second = hook.texts()
    lines = first.splitlines()
    assert lines[0] == "sheetrunner: 14 failed, 1 sweep finished"
    assert len([line for line in lines if line.startswith("• ")]) == MAX_LISTED
    assert lines[-1] == f"… and {15 - MAX_LISTED} more"
    assert "run099" in second and "run099" not in first


def test_long_and_multiline_messages_are_one_bounded_line() -> None:
    text = compose([failed(1, message="Traceback\n  File x\x00\x1b[31m\n" + "y" * 5000)])
    line = text.splitlines()[1]
    assert len(text.splitlines()) == 2 and len(line) <= 302
    assert "\x00" not in line and "\x1b" not in line and line.endswith("…")


def test_the_rate_limit_drops_with_one_log_line_and_says_so_later(
        hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    n = notifier(hook.url, max_per_hour=2, clock=clock)
    n.cycle([failed(1)])
    clock.t += 60
    n.cycle([failed(2)])
    clock.t += 60
    n.cycle([failed(3), failed(4), failed(5)])  # over the limit
    n.cycle([failed(6)])  # over the limit
    wait_for(lambda: len(hook.requests) == 2)
    drops = [r.getMessage() for r in caplog.records if "rate limit" in r.getMessage()]
    assert len(drops) == 2
    assert "3 notice(s) over the rate limit of 2 messages an hour" in drops[0]
    assert "1 notice(s)" in drops[1] and "4 dropped since the last message sent" in drops[1]
    clock.t += 3600 - 60  # the first message leaves the hour's window
    n.cycle([failed(7)])
    wait_for(lambda: len(hook.requests) == 3)
    n.close()
    texts = hook.texts()
    assert "run007" in texts[2]
    assert "4 earlier notices were dropped: at most 2 messages an hour" in texts[2]
    assert all("run003" not in t and "run006" not in t for t in texts)


def test_a_failing_webhook_is_retried_with_backoff(hook: Hook,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook.answers = [500, 503]
    n = notifier(hook.url, backoff_s=0.05)
    n.cycle([failed(1)])
    wait_for(lambda: len(hook.requests) == 3)
    n.close()
    assert len(set(hook.texts())) == 1  # the same message, three times
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2
    assert "HTTP 500" in retries[0] and "retrying in 0.1 s" in retries[1]  # doubled
    assert not any("dropped" in r.getMessage() for r in caplog.records)


def test_after_its_retries_a_message_is_dropped_and_the_next_one_still_goes(
        hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook.answers = [500, 500, 500]
    n = notifier(hook.url, attempts=3)
    n.cycle([failed(1)])
    wait_for(lambda: any("dropped after" in r.getMessage() for r in caplog.records))
    assert len(hook.requests) == 3
    (drop,) = [r for r in caplog.records if "dropped after" in r.getMessage()]
    assert drop.levelno == logging.WARNING
    assert "3 attempt(s)" in drop.getMessage() and "HTTP 500" in drop.getMessage()
    n.cycle([failed(2)])
    wait_for(lambda: len(hook.requests) == 4)
    n.close()
    assert "run002" in hook.texts()[3]


def test_a_4xx_answer_is_not_retried(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook.answers = [404]
    n = notifier(hook.url)
    n.cycle([failed(1)])
    wait_for(lambda: any("dropped after 1 attempt" in r.getMessage() for r in caplog.records))
    n.close()
    assert len(hook.requests) == 1
    assert any("HTTP 404 (not retried" in r.getMessage() for r in caplog.records)


def test_a_hanging_webhook_never_blocks_a_cycle(hook: Hook,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook.hang.set()
    n = notifier(hook.url, timeout_s=20, queue_size=2)
    started = time.monotonic()
    n.cycle([failed(1)])
    assert time.monotonic() - started < 0.5
    hook.in_flight.wait(10)
    assert hook.in_flight.is_set()
    # the server holds the first message; later cycles return at once all the same
    for i in range(2, 6):
        started = time.monotonic()
        n.cycle([failed(i)])
        assert time.monotonic() - started < 0.5
        assert hook.in_flight.is_set() and not hook.release.is_set()  # still hanging
    # two wait in the queue; the rest were dropped, each with a log line
    full = [r.getMessage() for r in caplog.records if "already waiting" in r.getMessage()]
    assert len(full) == 2 and "1 notice(s)" in full[0]
    started = time.monotonic()
    n.close(timeout_s=0.3)  # close waits only briefly for a destination that hangs
    assert time.monotonic() - started < 2
    assert any("not sent at exit" in r.getMessage() for r in caplog.records)
    hook.release.set()


def test_a_timeout_counts_as_a_failed_attempt(hook: Hook,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    hook.hang.set()
    n = notifier(hook.url, timeout_s=0.3, attempts=2)
    n.cycle([failed(1)])
    wait_for(lambda: any("dropped after 2" in r.getMessage() for r in caplog.records))
    hook.release.set()
    n.close()
    assert any("no answer within 0.3 s" in r.getMessage() for r in caplog.records)


def test_close_sends_what_is_queued(hook: Hook) -> None:
    n = notifier(hook.url)
    n.cycle([failed(1)])
    n.close()
    assert len(hook.requests) == 1
    n.cycle([failed(2)])  # after close: nothing more
    time.sleep(0.2)
    assert len(hook.requests) == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_webhook_url_never_reaches_the_log(hook: Hook,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # an answering server: errors, then success
    hook.answers = [500, 404]
    n = notifier(hook.url, attempts=2)
    n.cycle([failed(1)])
    n.cycle([failed(2)])
    n.cycle([failed(3)])
    wait_for(lambda: len(hook.requests) == 4)
    n.close()
    # nobody listening; a server that hangs past the timeout
    refused = notifier(f"http://127.0.0.1:{free_port()}{SECRET_PATH}?token=q1w2e3", attempts=2)
    refused.cycle([failed(4)])
    hook.hang.set()
    slow = notifier(hook.url, timeout_s=0.2, attempts=2)
    slow.cycle([failed(5)])
    wait_for(lambda: sum("dropped after" in r.getMessage() for r in caplog.records) >= 3)
    refused.close()
    slow.close(timeout_s=0.2)
    hook.release.set()
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "127.0.0.1" in logged  # the host is named
    for secret in (SECRET_PATH, "s3cr3tT0k3nXYZ", "q1w2e3"):
        assert secret not in logged
    assert "s3cr3t" not in repr(slow.config) and "s3cr3t" not in str(slow.config)


# -- the command --------------------------------------------------------------------------------


RECORDER = """\
import json, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(sys.argv[2:]) + "\\n")
sys.exit(int(sys.argv[2]))
"""


def recorder(tmp_path: Path, exit_code: int = 0) -> tuple[tuple[str, ...], Path]:
    script = tmp_path / "record.py"
    script.write_text(RECORDER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.jsonl"
    return (sys.executable, str(script), str(calls), str(exit_code)), calls


def test_the_command_gets_the_message_as_one_argv_item(tmp_path: Path) -> None:
    command, calls = recorder(tmp_path)
    hostile = "$(id) `id` \"double\" 'single'; rm -rf / | cat <x> & $HOME \\ \n next line"
    n = notifier(command=command)
    n.cycle([failed(1, message=hostile)])
    wait_for(lambda: calls.exists() and calls.read_text().count("\n") == 1)
    n.close()
    (argv,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argv[0] == "0" and len(argv) == 2  # the config's items, then the message alone
    message = argv[1]
    assert message == compose([failed(1, message=hostile)])
    assert "$(id) `id` \"double\" 'single'; rm -rf / | cat <x> & $HOME \\ next line" in message
    assert "uid=" not in calls.read_text()  # nothing was put through a shell
    assert not message.startswith("-")  # never read as an option


def test_a_failing_command_is_retried_then_dropped(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    command, calls = recorder(tmp_path, exit_code=3)
    n = notifier(command=command, attempts=3)
    n.cycle([failed(1)])
    wait_for(lambda: any("dropped after" in r.getMessage() for r in caplog.records))
    n.close()
    assert calls.read_text().count("\n") == 3
    (drop,) = [r.getMessage() for r in caplog.records if "dropped after" in r.getMessage()]
    assert "exit status 3" in drop and "command " + sys.executable in drop


def test_a_missing_command_is_reported_once(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    n = notifier(command=(str(tmp_path / "no-such-notifier"),))
    n.cycle([failed(1)])
    wait_for(lambda: any("dropped after 1 attempt" in r.getMessage() for r in caplog.records))
    n.close()


def test_webhook_and_command_both_get_the_message(hook: Hook, tmp_path: Path) -> None:
    command, calls = recorder(tmp_path)
    n = notifier(hook.url, command=command)
    n.cycle([failed(1, message="a <b>")])
    wait_for(lambda: len(hook.requests) == 1 and calls.exists())
    n.close()
    assert "a &lt;b&gt;" in hook.texts()[0]  # escaped for Slack only
    assert json.loads(calls.read_text())[1].endswith("a <b>")


def test_without_webhook_or_command_nothing_runs() -> None:
    n = Notifier(NotifyConfig())
    assert n._thread is None
    assert n.notices({}, {"x": run("x", Status.FAILED)}, []) == []
    n.cycle([failed(1)])
    n.close()


# -- which notices a cycle produces -----------------------------------------------------------


def run(run_id: str, status: Status, **fields) -> Run:
    fields.setdefault("job", "digits")
    fields.setdefault("params", (("lr", "0.1"),))
    return make_run(run_id=run_id, key=fields.pop("key", "k"), gpus=0, where=None, status=status,
               created_at=NOW, updated_at=NOW, **fields)


def row(n: int, run_id: str | None, sweep: str = "", **fields) -> Experiment:
    return Experiment(row=n, run_id=run_id, job="digits", params=(("lr", "0.1"),), key="k",
                      sweep_id=sweep, **fields)


def sweep_row(n: int, sweep_id: str) -> Experiment:
    return Experiment(row=n, run_id=sweep_id, job="digits", params=(("lr", "0.1, 0.2"),),
                      key="s", children=((("lr", "0.1"),), (("lr", "0.2"),)))


def derive(before: dict[str, Run], after: dict[str, Run], rows: list[Experiment],
           on: tuple[str, ...] = ("failed", "sweep-finished"),
           state: tuple[set[str], set[str]] | None = None) -> list[Notice]:
    announced, open_sweeps = state if state is not None else (set(), set())
    return derive_notices(before, after, rows, on, announced, open_sweeps)


def test_a_run_that_fails_this_cycle_is_announced_once() -> None:
    before = {"r1": run("r1", Status.RUNNING), "r2": run("r2", Status.RUNNING)}
    after = {"r1": run("r1", Status.FAILED, message="exit code 2"),
             "r2": run("r2", Status.SUCCEEDED)}
    (notice,) = derive(before, after, [row(5, "r1"), row(6, "r2")])
    assert notice == Notice("failed", "r1", 5, "digits", (("lr", "0.1"),), "exit code 2")
    assert derive(after, after, [row(5, "r1")]) == []  # next cycle: not news
    both = derive(before, after, [], on=("failed", "succeeded"))
    assert [(n.event, n.run_id) for n in both] == [("failed", "r1"), ("succeeded", "r2")]


def test_new_runs_count_but_runs_rebuilt_after_lost_state_do_not() -> None:
    after = {"dup": run("dup", Status.DUPLICATE, row=3),
             "rebuilt": run("rebuilt", Status.FAILED, in_sheet=True, row=4)}
    notices = derive({}, after, [], on=("failed", "duplicate"))
    assert [(n.event, n.run_id, n.row) for n in notices] == [("duplicate", "dup", 3)]


def test_a_sweep_is_announced_when_its_last_child_ends_and_only_once() -> None:
    rows = [sweep_row(2, "sweep-aaaa"), row(3, "c1", "sweep-aaaa"), row(4, "c2", "sweep-aaaa")]
    state: tuple[set[str], set[str]] = (set(), set())
    cycle1 = {"c1": run("c1", Status.SUCCEEDED), "c2": run("c2", Status.RUNNING)}
    assert derive(cycle1, cycle1, rows, state=state) == []
    cycle2 = {"c1": run("c1", Status.SUCCEEDED), "c2": run("c2", Status.FAILED)}
    notices = derive(cycle1, cycle2, rows, state=state)
    assert [(n.event, n.run_id, n.row) for n in notices] == [("failed", "c2", 4),
                                                          ("sweep-finished", "sweep-aaaa", 2)]
    assert notices[1].message == "2 runs: 1 succeeded, 1 failed"
    # a child rerun and finished again: the sweep is not announced a second time
    cycle3 = {**cycle2, "c2": run("c2", Status.FAILED, replaced_by="c3"),
              "c3": run("c3", Status.RUNNING)}
    assert derive(cycle2, cycle3, rows, state=state) == []
    cycle4 = {**cycle3, "c3": run("c3", Status.SUCCEEDED)}
    assert derive(cycle3, cycle4, rows, on=("sweep-finished",), state=state) == []


def test_a_sweep_already_finished_when_the_daemon_starts_is_not_news() -> None:
    rows = [row(3, "c1", "sweep-bbbb"), row(4, "c2", "sweep-bbbb")]
    runs = {"c1": run("c1", Status.SUCCEEDED), "c2": run("c2", Status.STOPPED)}
    assert derive(runs, runs, rows) == []


def test_a_sweep_waits_for_children_without_a_run_and_follows_reruns() -> None:
    state: tuple[set[str], set[str]] = (set(), set())
    # c2's row was just claimed (no id read yet): not finished
    runs = {"c1": run("c1", Status.SUCCEEDED), "c2": run("c2", Status.DUPLICATE)}
    assert derive({}, runs, [row(3, "c1", "sweep-cccc"), row(4, None, "sweep-cccc")],
                  on=("sweep-finished",), state=state) == []
    # next cycle the id is read; the run did not change, but the sweep was seen unfinished
    rows = [row(3, "c1", "sweep-cccc"), row(4, "c2", "sweep-cccc"),
            row(5, None, "sweep-cccc", error="gpus is not a whole number")]
    (notice,) = derive(runs, runs, rows, on=("sweep-finished",), state=state)
    assert notice.message == "3 runs: 1 succeeded, 1 duplicate, 1 invalid"
    assert notice.row == 3  # no sweep row: the first child's
    # the id a row shows was rerun: its replacement decides
    rows = [row(3, "d1", "sweep-dddd")]
    runs = {"d1": run("d1", Status.FAILED, replaced_by="d2"), "d2": run("d2", Status.RUNNING)}
    assert derive(runs, runs, rows, on=("sweep-finished",), state=state) == []


def test_the_label_names_the_sheet_never_a_google_url() -> None:
    from sheetrunner.config import SheetConfig
    from sheetrunner.notify import sheet_label

    assert sheet_label(SheetConfig(path=Path("/x/experiments.xlsx"))) == "experiments.xlsx"
    assert sheet_label(SheetConfig(path=Path("/x/e.xlsx"), worksheet="runs")) == "e.xlsx › runs"
    assert sheet_label(SheetConfig(url="https://docs.google.com/spreadsheets/d/KEY/edit")) == ""
    assert compose([failed(1)], label="e.xlsx").startswith("sheetrunner (e.xlsx): 1 failed\n")
