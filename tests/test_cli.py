"""The daily commands as a person types them: version and help, finding the config, init,
logs, ps (pipes, filters, rows without a run, --watch)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import helpers
import openpyxl
import pytest
from helpers import HEADER, cycle_until, local_config, read_workbook, write_workbook
from rich.console import Console

from sheetrunner import __version__, cli
from sheetrunner.daemon import build
from sheetrunner.errors import ConfigError, SheetrunnerError
from sheetrunner.store import Store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_stray_jobs(tmp_path):
    yield
    helpers.kill_jobs_under(tmp_path)


def sheetrunner(*argv: str, cwd: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(cli.CONFIG_VARIABLE, None)
    return subprocess.run([sys.executable, "-m", "sheetrunner", *argv], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd, **kw)


# -- 1. version and help ---------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata_or_the_constant(capsys, monkeypatch):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"sheetrunner {cli.version()}"

    from importlib import metadata

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert cli.version() == __version__


def test_help_is_written_for_users():
    def help_of(*command: str) -> str:
        shown = sheetrunner(*command, "--help")
        assert shown.returncode == 0
        return " ".join(shown.stdout.split())  # argparse wraps lines to the terminal

    main = help_of()
    assert "Thin" not in main and "parse arguments" not in main
    assert "spreadsheet" in main and "SHEETRUNNER_CONFIG" in main
    for command, words in {"ps": "list the runs", "logs": "print a run's output",
                           "init": "starter config", "daemon": "until stopped"}.items():
        assert words in main, command
        assert words in help_of(command)


# -- 2. finding the config -------------------------------------------------------------------------


def test_config_is_found_by_flag_then_variable_then_here_then_above(tmp_path):
    deep = tmp_path / "project" / "src" / "deep"
    deep.mkdir(parents=True)
    above = tmp_path / "project" / "sheetrunner.toml"
    above.write_text("")
    assert cli.find_config("x.toml", {cli.CONFIG_VARIABLE: "y.toml"}, deep) == Path("x.toml")
    assert cli.find_config(None, {cli.CONFIG_VARIABLE: "y.toml"}, deep) == Path("y.toml")
    assert cli.find_config(None, {}, deep) == above
    here = deep / "sheetrunner.toml"
    here.write_text("")
    assert cli.find_config(None, {}, deep) == here


def test_no_config_anywhere_is_an_error_listing_where_it_looked(tmp_path):
    with pytest.raises(ConfigError) as error:
        cli.find_config(None, {}, tmp_path)
    text = str(error.value)
    assert "-c" in text and cli.CONFIG_VARIABLE in text
    assert str(tmp_path / "sheetrunner.toml") in text
    assert str(tmp_path.parent / "sheetrunner.toml") in text
    done = sheetrunner("ps", cwd=tmp_path)
    assert done.returncode == 2 and "no config found" in done.stdout and "Traceback" not in done.stderr


def test_a_command_run_in_a_subdirectory_uses_the_projects_config(tmp_path):
    local_config(tmp_path)
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [])
    sub = tmp_path / "notebooks"
    sub.mkdir()
    done = sheetrunner("ps", "--json", cwd=sub)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout) == []
    assert (tmp_path / "state" / "state.sqlite").exists()  # the config's own state_dir


# -- 3. init ---------------------------------------------------------------------------------------


def _init(tmp_path: Path, mask: int, capsys) -> str:
    old = os.umask(mask)
    try:
        assert cli.main(["init", "-c", str(tmp_path / "sheetrunner.toml")]) == 0
    finally:
        os.umask(old)
    return capsys.readouterr().out


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_init_files_follow_the_umask(tmp_path, capsys, mask, mode):
    _init(tmp_path, mask, capsys)
    for name in ("experiments.xlsx", "sheetrunner.toml", "train.py"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_init_prints_brackets_as_written(tmp_path, capsys):
    out = _init(tmp_path, 0o022, capsys)
    assert "edit [jobs] and [[hosts]]" in out, out


def test_the_starter_rows_launch_on_the_starter_host(tmp_path, capsys):
    _init(tmp_path, 0o022, capsys)
    rows = read_workbook(tmp_path / "experiments.xlsx")
    assert [r["gpus"] for r in rows] == [0, 0] and [r["job"] for r in rows] == ["train"] * 2
    assert cli.main(["once", "-c", str(tmp_path / "sheetrunner.toml")]) == 0
    assert "launched 2" in capsys.readouterr().out
    rows = read_workbook(tmp_path / "experiments.xlsx")
    assert {r["status"] for r in rows} <= {"launching", "running", "succeeded"}, rows


def test_init_again_adds_no_rows_and_keeps_the_users(tmp_path, capsys):
    _init(tmp_path, 0o022, capsys)
    book = openpyxl.load_workbook(tmp_path / "experiments.xlsx")
    book.worksheets[0].append(["train", 0.5])
    book.save(tmp_path / "experiments.xlsx")
    out = _init(tmp_path, 0o022, capsys)
    assert "wrote" not in out
    assert [r["--lr"] for r in read_workbook(tmp_path / "experiments.xlsx")] == [0.1, 0.01, 0.5]


# -- 4. logs ---------------------------------------------------------------------------------------


class FakeAgent:
    """A host whose log grows by one chunk per look, and whose attempt ends after a while."""

    def __init__(self, chunks: list[bytes], running_probes: int):
        self.log = b""
        self.chunks = list(chunks)
        self.running_probes = running_probes

    def probe(self, wanted):
        ((run_id, attempt),) = wanted
        if self.chunks:
            self.log += self.chunks.pop(0)
        state = "running" if self.running_probes > 0 else "exited"
        self.running_probes -= 1
        return {"attempts": [{"run_id": run_id, "attempt": attempt, "state": state}]}

    def tail(self, run_id, attempt, size=65536, offset=None):
        return self.log[offset:offset + 4] if offset is not None else self.log[-size:]


def test_follow_ends_when_the_attempt_ends_and_its_log_is_drained():
    agent = FakeAgent([b"one\n", b"two\n", b"three\n"], running_probes=2)
    out, naps = io.BytesIO(), []
    assert cli.follow(agent, "r-1", 1, out, sleep=naps.append) == 0
    assert out.getvalue() == b"one\ntwo\nthree\n" and len(naps) == 2


def test_follow_of_an_attempt_the_host_does_not_have_ends():
    class Gone(FakeAgent):
        def probe(self, wanted):
            return {"attempts": []}

    out = io.BytesIO()
    assert cli.follow(Gone([], 0), "r-1", 1, out, sleep=lambda s: pytest.fail("waited")) == 0


def test_follow_with_lines_starts_at_the_last_lines():
    agent = FakeAgent([], running_probes=0)
    agent.log = b"a\nb\nc\nd\n"
    out = io.BytesIO()
    cli.follow(agent, "r-1", 1, out, lines=2, sleep=lambda s: None)
    assert out.getvalue() == b"c\nd\n"


def test_last_lines():
    assert cli.last_lines(b"a\nb\nc", 2) == b"b\nc"
    assert cli.last_lines(b"a\nb\nc\n", 1) == b"c\n"
    assert cli.last_lines(b"a\n", None) == b"a\n"


def test_an_attempt_that_does_not_exist_names_those_that_do():
    with pytest.raises(SheetrunnerError, match="run r-1 has no attempt 9; its attempts: 1, 2"):
        cli.chosen_attempt("r-1", 9, 2, {1: "local", 2: "local"})
    assert cli.chosen_attempt("r-1", 1, 2, {1: "local", 2: "local"}) == 1
    assert cli.chosen_attempt("r-1", None, 2, {1: "local"}) == 2


def test_logs_of_a_real_run_last_lines_follow_and_attempts(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 3, 0.01, None, 0]])
    daemon = build(local_config(tmp_path))
    try:
        (row,) = cycle_until(daemon, lambda rows: rows[0]["status"] == "succeeded")
    finally:
        daemon.close()
    cfg = str(tmp_path / "sheetrunner.toml")
    full = sheetrunner("logs", row["id"], "-c", cfg)
    assert full.returncode == 0 and full.stdout.count("\n") > 1, full.stdout + full.stderr
    last = sheetrunner("logs", row["id"], "-n", "1", "-c", cfg)
    assert last.returncode == 0 and last.stdout == full.stdout.splitlines(keepends=True)[-1]
    followed = sheetrunner("logs", row["id"], "-f", "-c", cfg)  # ended: returns, not hangs
    assert followed.returncode == 0 and followed.stdout == full.stdout
    missing = sheetrunner("logs", row["id"], "--attempt", "9", "-c", cfg)
    assert missing.returncode == 1 and "has no attempt 9; its attempts: 1" in missing.stdout


# -- 5./6. ps ----------------------------------------------------------------------------------------


def test_ps_into_a_closed_pipe_ends_quietly(tmp_path):
    local_config(tmp_path)
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    reader = subprocess.Popen([sys.executable, "-m", "sheetrunner", "ps", "--json", "-c",
                               str(tmp_path / "sheetrunner.toml")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reader.stdout.close()  # like `| head -1` that already went away
    _, err = reader.communicate(timeout=60)
    assert reader.returncode in (0, 141) and err == b"", err.decode()


def _args(**given):
    import argparse

    base = {"status": [], "job": [], "sweep": [], "host": [], "all": False, "json": False,
            "watch": None, "config": None}
    return argparse.Namespace(**{**base, **given})


def _noted(monkeypatch, rows):
    monkeypatch.setattr(Store, "noted_rows", lambda self: rows, raising=False)


def test_ps_lists_rows_without_a_run_and_filters(tmp_path, monkeypatch):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 1, 0.01, None, 0]])
    config = local_config(tmp_path)
    daemon = build(config)
    try:
        (row,) = cycle_until(daemon, lambda rows: rows[0]["status"] == "succeeded")
    finally:
        daemon.close()
    _noted(monkeypatch, [{"row": 3, "job": "nope", "params": [["steps", "2"]],
                          "status": "invalid", "message": "unknown job 'nope'"}])
    entries = cli.ps_entries(config, _args())
    assert [(e["id"], e["status"]) for e in entries] == [(row["id"], "succeeded"), (None, "invalid")]
    assert entries[0]["params"]["steps"] == "1"
    assert [e["id"] for e in cli.ps_entries(config, _args(status=["invalid"]))] == [None]
    assert [e["id"] for e in cli.ps_entries(config, _args(host=["local"]))] == [row["id"]]
    assert cli.ps_entries(config, _args(job=["other"])) == []
    out = io.StringIO()
    Console(file=out, width=80).print(cli.ps_view(config, _args(), Console(width=80)))
    assert "steps=1" in out.getvalue() and "unknown job 'nope'" in out.getvalue()


def test_ps_watch_redraws_from_the_store_until_ctrl_c(tmp_path, monkeypatch):
    config = local_config(tmp_path)
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [])
    _noted(monkeypatch, [])
    console = Console(file=io.StringIO(), width=80)
    first = cli.ps_view(config, _args(), console)
    _noted(monkeypatch, [{"row": 2, "job": "x", "params": [], "status": "invalid",
                          "message": "now shown"}])
    second = cli.ps_view(config, _args(), console)  # the refresh reads the store again
    assert first.row_count == 0 and second.row_count == 1

    naps = []

    def nap(seconds):
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.time, "sleep", nap)
    drawn = []
    assert cli._watch(lambda: drawn.append(1) or first, 5.0, console) == 0
    assert naps == [5.0, 5.0] and len(drawn) == 2


def test_events_lists_the_journal_filtered_by_run_and_age(tmp_path, capsys):
    from datetime import UTC, datetime, timedelta

    from helpers import local_config

    from sheetrunner.store import Store

    config = local_config(tmp_path)
    store = Store(Path(config.daemon.state_dir) / "state.sqlite")
    old = datetime.now(UTC) - timedelta(hours=3)
    store.log_event("aaaaaaaa-111111", "claimed", "row 2 status=queued", old)
    store.log_event("aaaaaaaa-111111", "crashed", "exit code 1 on attempt 1", datetime.now(UTC))
    store.log_event("bbbbbbbb-222222", "claimed", "row 3", datetime.now(UTC))
    store.close()
    assert cli.main(["events", "-c", str(config.path), "--json", "--since", "1h",
                     "aaaaaaaa-111111"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["run_id"], r["kind"]) for r in rows] == [("aaaaaaaa-111111", "crashed")]
    assert cli.main(["events", "-c", str(config.path)]) == 0
    text = capsys.readouterr().out
    assert "claimed" in text and "bbbbbbbb-222222" in text and "exit code 1" in text
    assert cli.main(["events", "-c", str(config.path), "--since", "yesterday"]) == 1
    assert "an age (30m, 2h, 1d)" in capsys.readouterr().out
