"""Untrusted input at start: a bad config or sheet path fails with the key, what is wrong and a
right value, never a traceback; error text and logged row data reach the console intact and fast.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import openpyxl
import pytest
from helpers import write_workbook

from sheetrunner import cli, config
from sheetrunner.errors import ConfigError, SheetError, SheetUnavailable
from sheetrunner.sheet.expansion import SWEEP_COLUMN
from sheetrunner.sheet.lease import META_TAB
from sheetrunner.sheet.render import CURVE_COLUMN, METRICS_TAB
from sheetrunner.sheet.schema import OWNED_COLUMNS, PARAM_PREFIX, USER_COLUMNS
from sheetrunner.sheets.workbook import Workbook

REPO = Path(__file__).resolve().parents[1]

JOBS = '[jobs.train]\ncommand = ["python3", "train.py"]\n'
LOCAL = '[[hosts]]\nname = "local"\nlocal = true\n'
REMOTE = '[[hosts]]\nname = "gpu-a"\naddress = "10.0.0.5"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sheetrunner.toml"
    path.write_text(textwrap.dedent(text))
    return path


def refused(tmp_path: Path, text: str, *fragments: str) -> str:
    """Loading `text` is a ConfigError whose message holds every fragment."""
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def sheet(extra: str = "", path: str = "x.xlsx") -> str:
    return f'[sheet]\npath = "{path}"\n{extra}\n'


# -- 1. names that would destroy the sheet ------------------------------------------------------


@pytest.mark.parametrize("worksheet,pool_tab", [("runs", "runs"), ("runs", "Runs"),
                                                ("Experiments", "experiments")])
def test_pool_tab_may_not_be_the_experiments_tab(tmp_path, worksheet, pool_tab) -> None:
    refused(tmp_path, sheet(f'worksheet = "{worksheet}"\npool_tab = "{pool_tab}"') + JOBS + LOCAL,
            "sheet.pool_tab", repr(pool_tab), "experiments tab", 'pool_tab = "pool"')


def test_pool_tab_may_not_be_the_tab_init_creates_when_worksheet_is_unset(tmp_path) -> None:
    # `sheetrunner init` names the first tab "experiments"; with worksheet unset, that is it
    book = tmp_path / "x.xlsx"
    Workbook(book).initialize(["job"], ["train"])
    assert openpyxl.load_workbook(book).sheetnames == ["experiments"]
    refused(tmp_path, sheet('pool_tab = "experiments"') + JOBS + LOCAL,
            "sheet.pool_tab", "'experiments'", "first tab", 'pool_tab = "pool"', "worksheet")


@pytest.mark.parametrize("name", [META_TAB, METRICS_TAB, "_pool", "_SHEETRUNNER"])
def test_pool_tab_may_not_be_a_hidden_tab_of_sheetrunner(tmp_path, name) -> None:
    refused(tmp_path, sheet(f'pool_tab = "{name}"') + JOBS + LOCAL,
            "sheet.pool_tab", repr(name), "'_'", META_TAB, METRICS_TAB, 'pool_tab = "pool"')


@pytest.mark.parametrize("name", [META_TAB, METRICS_TAB])
def test_worksheet_may_not_be_a_hidden_tab_of_sheetrunner(tmp_path, name) -> None:
    refused(tmp_path, sheet(f'worksheet = "{name}"') + JOBS + LOCAL, "sheet.worksheet", repr(name))


def test_a_pool_tab_beside_the_experiments_tab_is_fine(tmp_path) -> None:
    cfg = config.load(write(tmp_path, sheet('pool_tab = "pool"') + JOBS + LOCAL))
    assert cfg.sheet.pool_tab == "pool"
    cfg = config.load(write(tmp_path, sheet('worksheet = "runs"\npool_tab = "experiments"')
                            + JOBS + LOCAL))
    assert cfg.sheet.pool_tab == "experiments" and cfg.sheet.worksheet == "runs"


TAKEN = [*USER_COLUMNS, *OWNED_COLUMNS, SWEEP_COLUMN, CURVE_COLUMN]


@pytest.mark.parametrize("column", TAKEN)
def test_a_metric_column_may_not_be_a_user_or_owned_column(tmp_path, column) -> None:
    refused(tmp_path, sheet(f'metric_columns = ["acc", "{column}"]') + JOBS + LOCAL,
            "sheet.metric_columns", repr(column), 'metric_columns = ["acc", "loss"]')


def test_a_metric_column_may_not_be_a_parameter(tmp_path) -> None:
    refused(tmp_path, sheet(f'metric_columns = ["{PARAM_PREFIX}lr"]') + JOBS + LOCAL,
            "sheet.metric_columns", "'--lr'", "parameter", "'lr'")


def test_a_metric_column_may_not_be_another_metrics_best_column(tmp_path) -> None:
    refused(tmp_path, sheet('metric_columns = ["acc", "best acc"]') + JOBS + LOCAL,
            "sheet.metric_columns", "'best acc'", "best value of 'acc'")


@pytest.mark.parametrize("columns,fragment", [('[""]', "empty name"), ('["  "]', "empty name"),
                                              ('["acc", "acc"]', "twice"),
                                              ('[" acc"]', "spaces")])
def test_empty_duplicate_or_padded_metric_columns(tmp_path, columns, fragment) -> None:
    refused(tmp_path, sheet(f"metric_columns = {columns}") + JOBS + LOCAL,
            "sheet.metric_columns", fragment)


def test_good_metric_columns_pass(tmp_path) -> None:
    cfg = config.load(write(tmp_path, sheet('metric_columns = ["acc", "val loss", "best"]')
                            + JOBS + LOCAL))
    assert cfg.sheet.metric_columns == ("acc", "val loss", "best")


# -- 2. a [sheet] path that is not a workbook ---------------------------------------------------


def test_sheet_path_that_is_not_an_xlsx_file_is_a_config_error(tmp_path) -> None:
    refused(tmp_path, sheet(path="/etc/passwd") + JOBS + LOCAL,
            "sheet.path", "'/etc/passwd'", "not a .xlsx file", 'path = "experiments.xlsx"')
    (tmp_path / "book.xlsx").mkdir()
    refused(tmp_path, sheet(path="book.xlsx") + JOBS + LOCAL,
            "sheet.path", "book.xlsx", "directory", 'path = "experiments.xlsx"')
    (tmp_path / "notes.csv").write_text("a,b\n")
    refused(tmp_path, sheet(path="notes.csv") + JOBS + LOCAL, "sheet.path", "notes.csv", ".xlsx")


def test_a_missing_or_real_workbook_path_is_fine(tmp_path) -> None:
    assert config.load(write(tmp_path, sheet(path="new.xlsx") + JOBS + LOCAL)).sheet.path
    write_workbook(tmp_path / "Book.XLSX", ["job"], [])
    assert config.load(write(tmp_path, sheet(path="Book.XLSX") + JOBS + LOCAL)).sheet.path


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


CONTENT_TYPES = ('<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
                 '2006/content-types"><Override PartName="/xl/workbook.xml" ContentType="'
                 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
                 '</Types>')

NOT_WORKBOOKS = {
    "text": lambda p: p.write_bytes(Path("/etc/passwd").read_bytes() if Path("/etc/passwd").exists()
                                    else b"root:x:0:0:root:/root:/bin/sh\n"),
    "empty": lambda p: p.write_bytes(b""),
    "zip of something else": lambda p: _zip(p, {"readme.txt": "hello"}),
    "no workbook part": lambda p: _zip(p, {"[Content_Types].xml": CONTENT_TYPES.replace(
        "/xl/workbook.xml", "/word/document.xml")}),
    "broken content types": lambda p: _zip(p, {"[Content_Types].xml": "<<<"}),
    "a workbook with no sheet": lambda p: _zip(p, {"[Content_Types].xml": CONTENT_TYPES,
                                                   "xl/workbook.xml": "<x/>"}),
}


@pytest.mark.parametrize("make", list(NOT_WORKBOOKS.values()), ids=list(NOT_WORKBOOKS))
def test_a_file_that_is_no_workbook_is_a_sheet_error_naming_path_and_fix(tmp_path, make) -> None:
    path = tmp_path / "x.xlsx"
    make(path)
    for action in (lambda: Workbook(path).read(),
                   lambda: Workbook(path).initialize(["job"], ["train"])):
        with pytest.raises(SheetUnavailable) as info:
            action()
        message = str(info.value)
        assert str(path) in message and ".xlsx workbook" in message
        assert "[sheet] path" in message and "sheetrunner init" in message


def test_a_directory_as_the_workbook_is_a_sheet_error(tmp_path) -> None:
    path = tmp_path / "x.xlsx"
    path.mkdir()
    with pytest.raises(SheetError) as info:
        Workbook(path).read()
    assert str(path) in str(info.value) and "[sheet] path" in str(info.value)


@pytest.mark.parametrize("raised", [
    openpyxl.utils.exceptions.InvalidFileException("unsupported format"),
    TypeError("expected <class 'str'>"), AttributeError("'NoneType' has no attribute 'get'"),
    IndexError("list index out of range"), zipfile.LargeZipFile("too large"),
])
def test_whatever_openpyxl_raises_on_load_becomes_a_sheet_error(tmp_path, monkeypatch,
                                                                 raised) -> None:
    path = write_workbook(tmp_path / "x.xlsx", ["job"], [])

    def load_workbook(*args, **kwargs):
        raise raised

    monkeypatch.setattr(openpyxl, "load_workbook", load_workbook)
    with pytest.raises(SheetUnavailable) as info:
        Workbook(path).read()
    assert str(path) in str(info.value) and type(raised).__name__ in str(info.value)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "sheetrunner.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_on_a_file_that_is_no_workbook_prints_the_error_not_a_traceback(tmp_path) -> None:
    _zip(tmp_path / "x.xlsx", {"readme.txt": "hello"})
    write(tmp_path, sheet() + JOBS + LOCAL)
    done = run_cli("init", "-c", str(tmp_path / "sheetrunner.toml"), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "x.xlsx" in done.stdout and "[sheet] path" in done.stdout
    write(tmp_path, sheet(path="/etc/passwd") + JOBS + LOCAL)
    done = run_cli("ps", "-c", str(tmp_path / "sheetrunner.toml"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr
    assert "config error: sheet.path = '/etc/passwd'" in done.stdout


# -- 3. state_dir -------------------------------------------------------------------------------


def test_state_dir_that_is_a_file_is_a_config_error(tmp_path) -> None:
    (tmp_path / "state").write_text("not a directory")
    refused(tmp_path, sheet() + '[daemon]\nstate_dir = "state"\n' + JOBS + LOCAL,
            "daemon.state_dir", "state", "not a directory", 'state_dir = ".sheetrunner-state"')
    refused(tmp_path, sheet() + '[daemon]\nstate_dir = "state/inner"\n' + JOBS + LOCAL,
            "daemon.state_dir", "is a file", 'state_dir = ".sheetrunner-state"')
    (tmp_path / "ok").mkdir()
    for value in ("ok", "fresh/deeper"):
        cfg = config.load(write(tmp_path, sheet() + f'[daemon]\nstate_dir = "{value}"\n'
                                + JOBS + LOCAL))
        assert cfg.daemon.state_dir == (tmp_path / value).resolve()


# -- 4. non-finite numbers ----------------------------------------------------------------------

NUMBERS = [("daemon", "poll_interval"), ("daemon", "host_lost_timeout"),
           ("daemon", "probe_timeout"), ("defaults", "hang_timeout"), ("defaults", "backoff"),
           ("defaults", "backoff_max"), ("defaults", "launch_timeout"),
           ("ssh", "connect_timeout"), ("ssh", "keepalive")]


@pytest.mark.parametrize("value", ["nan", "inf", "+inf", "-nan", "1e300"])
@pytest.mark.parametrize("table,key", NUMBERS, ids=[f"{t}.{k}" for t, k in NUMBERS])
def test_non_finite_numbers_are_config_errors(tmp_path, table, key, value) -> None:
    refused(tmp_path, sheet() + JOBS + LOCAL + f"[{table}]\n{key} = {value}\n",
            f"{table}.{key}", "finite", f"{key} = ")


# -- 5. placeholders in a job's command ---------------------------------------------------------


@pytest.mark.parametrize("item", ["{pyhton}", "{workdir}", "{PYTHON}", "{run_id}"])
def test_an_unknown_placeholder_names_the_job_and_the_known_ones(tmp_path, item) -> None:
    refused(tmp_path, sheet() + f'[jobs.train]\ncommand = ["{item}", "train.py"]\n' + LOCAL,
            "jobs.train.command", repr(item), "{python}", 'command = ["{python}", "train.py"]')


def test_python_placeholder_inside_an_item_is_not_replaced_so_refused(tmp_path) -> None:
    refused(tmp_path, sheet() + '[jobs.train]\ncommand = ["{python}3", "train.py"]\n' + LOCAL,
            "jobs.train.command", "'{python}3'", "whole item")


def test_braces_that_are_no_placeholder_item_are_left_alone(tmp_path) -> None:
    text = sheet() + '[jobs.train]\ncommand = ["{python}", "-c", "print({1: 2})", "{}"]\n' + LOCAL
    assert config.load(write(tmp_path, text)).jobs["train"].command[0] == "{python}"


# -- 6. a local host's workdir ------------------------------------------------------------------


def test_a_missing_workdir_is_an_error_when_a_local_host_would_use_it(tmp_path) -> None:
    job = '[jobs.train]\ncommand = ["python3", "train.py"]\nworkdir = "code"\n'
    message = refused(tmp_path, sheet() + job + LOCAL,
                      "jobs.train.workdir", "'code'", "does not exist", "'local'")
    assert str((tmp_path / "code").resolve()) in message  # where it was looked for
    (tmp_path / "code").write_text("a file")
    refused(tmp_path, sheet() + job + LOCAL, "jobs.train.workdir", "not a directory")
    (tmp_path / "code").unlink()
    # a remote host's workdir is on that host: not checked here
    assert config.load(write(tmp_path, sheet() + job + REMOTE)).jobs["train"].workdir == "code"
    (tmp_path / "code").mkdir()
    assert config.load(write(tmp_path, sheet() + job + LOCAL)).jobs["train"].workdir == "code"


# -- 7. messages survive the console ------------------------------------------------------------


def test_config_errors_print_brackets_as_written(tmp_path, capsys) -> None:
    cfg = write(tmp_path, JOBS + LOCAL + '[sheet]\nworksheet = "runs"\n')
    assert cli.main(["ps", "-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "config error: [sheet] needs exactly one of" in out, out
    cfg = write(tmp_path, sheet() + "[jobs]\n" + LOCAL)
    assert cli.main(["ps", "-c", str(cfg)]) == 2
    out = capsys.readouterr().out
    assert "[jobs] declares no job" in out and "[jobs.digits]" in out, out


def test_a_closing_tag_in_a_message_is_text_not_a_crash(tmp_path) -> None:
    write(tmp_path, sheet() + JOBS + LOCAL + '[daemon]\n"[/red]" = 1\n')
    done = run_cli("ps", "-c", "sheetrunner.toml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "unknown key 'daemon.[/red]'" in done.stdout


# -- 8. logs never slow down with data ----------------------------------------------------------


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("sheetrunner.daemon", logging.INFO, __file__, 1,
                             "launched run=%s argv=%s", ("1a2b3c4d-k7m2qx", message), None)


def _time_emit(handler: logging.Handler, message: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        handler.emit(_record(message))
        best = min(best, time.perf_counter() - start)
    return best


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# Digits in a row: the input rich's ReprHighlighter takes quadratic time on (20 KB: ~20 s).
def _argv(size: int) -> str:
    return repr(["--seed", "1" * size])


def test_a_one_megabyte_log_line_formats_like_a_short_one_off_a_terminal() -> None:
    stream = io.StringIO()
    handler = cli._log_handler(stream)
    assert not isinstance(handler, cli.RichHandler)
    short = _time_emit(handler, _argv(1000), repeat=20)
    long = _time_emit(handler, _argv(1_000_000))
    # linear: ~1000x the short one's time plus nothing; quadratic would be ~10^6x
    assert long < 5000 * short + 0.05, (long, short)
    assert len(stream.getvalue()) > 2_000_000


def test_on_a_terminal_log_lines_are_not_highlighted_and_take_linear_time() -> None:
    handler = cli._log_handler(FakeTerminal())
    assert isinstance(handler, cli.RichHandler)
    small = _time_emit(handler, _argv(10_000))
    big = _time_emit(handler, _argv(100_000))
    assert big < 40 * small + 0.05, (big, small)  # linear: ~10x; the highlighter: ~100x


def test_off_a_terminal_each_record_is_one_plain_line() -> None:
    stream = io.StringIO()
    handler = cli._log_handler(stream)
    handler.emit(_record("['--note', 'two\nlines [red]x[/] \x1b[2J']"))
    try:
        raise ValueError("boom")
    except ValueError:
        handler.emit(logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (),
                                       sys.exc_info()))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = lines
    assert " INFO launched run=1a2b3c4d-k7m2qx argv=" in first
    assert "two\\nlines [red]x[/] \\x1b[2J" in first  # the newline and escape written escaped
    assert first[:4].isdigit()  # the time first
    assert " ERROR failed\\nTraceback" in second and "ValueError: boom" in second


def test_the_cli_logs_plain_lines_when_stderr_is_no_terminal(tmp_path) -> None:
    code = ("import logging; from sheetrunner import cli; cli._setup_logging(False); "
            "logging.getLogger('sheetrunner.x').warning('a [bold]b[/]\\nc')")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.endswith(" WARNING a [bold]b[/]\\nc"), line
