"""A shared sheet and a hostile collaborator: every cell below is parsed, row by row, into
either an exact argv value or `invalid` with the reason and the fix; none takes the daemon
down, none makes it write an unbounded cell, none makes parsing slow."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sheetrunner.config import SheetConfig
from sheetrunner.model import Status, param_argv
from sheetrunner.reconcile import Policy, plan
from sheetrunner.sheet import sweeps
from sheetrunner.sheet.render import SheetView
from sheetrunner.sheet.schema import (
    MAX_CELL_CHARS,
    experiment_key,
    header_problem,
    header_problems,
    parse_table,
)
from sheetrunner.sheet.sweeps import MAX_CHILDREN, SweepError
from sheetrunner.sheet.table import Table, UnsavedFormula

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy(retries=2, hang_timeout_s=60, backoff_s=10, backoff_max_s=100,
                launch_timeout_s=30, on_host_lost="wait", host_lost_timeout_s=120)
HEADER = ["job", "--lr", "--seed", "--dup", "notes", "--dup", "--a b", "-- lr", "--", "  ",
          "gpus", "where", "priority", "retries", "action", "id", "status", "message"]
BIG_SWEEP = "0.1," * 12_000  # 48,000 characters
VALID, INVALID = "valid", "invalid"

# (what the row holds, {header: value}, VALID and its params, or INVALID and words of the reason)
CORPUS = [
    ("a plain row", {"--lr": 0.1, "--seed": 3}, VALID, (("lr", "0.1"), ("seed", "3"))),
    ("NUL", {"--lr": "0.1\x00; rm -rf ~"}, INVALID, "NUL character (U+0000)"),
    ("a 10 KB parameter", {"--lr": "9" * 10_240}, INVALID, "10,240 characters; at most 4,096"),
    ("a parameter at the limit", {"--lr": "9" * MAX_CELL_CHARS}, VALID,
     (("lr", "9" * MAX_CELL_CHARS),)),
    ("nan priority (text)", {"priority": "nan"}, INVALID, "priority must be a finite number"),
    ("nan priority (number)", {"priority": math.nan}, INVALID, "priority must be a finite number"),
    ("inf priority", {"priority": math.inf}, INVALID, "priority must be a finite number"),
    ("inf gpus", {"gpus": math.inf}, INVALID, "gpus must be a whole number ≥ 0, not 'inf'"),
    ("nan gpus", {"gpus": "NaN"}, INVALID, "gpus must be a whole number ≥ 0, not 'NaN'"),
    ("1e300 gpus", {"gpus": 1e300}, INVALID, "gpus must be at most 10,000"),
    ("-inf retries", {"retries": -math.inf}, INVALID, "retries must be a whole number ≥ 0"),
    ("1e400 retries", {"retries": "1e400"}, INVALID, "retries must be a whole number ≥ 0"),
    ("a value under the first of two --dup", {("--dup", 0): "1"}, INVALID,
     "column --dup appears twice (columns D and F); rename or delete one"),
    ("a value under the second --dup", {("--dup", 1): "2"}, INVALID, "column --dup appears twice"),
    ("a value under '--a b'", {"--a b": "x"}, INVALID, "'--a b' is not a parameter name"),
    ("a value under '-- lr'", {"-- lr": "x"}, INVALID, "'-- lr' is not a parameter name"),
    ("a value under '--'", {"--": "x"}, INVALID, "header '--' is not a parameter name"),
    ("a value under a blank header", {"  ": "x"}, VALID, ()),
    ("a 48 KB sweep", {"--lr": BIG_SWEEP}, INVALID, "48,000 characters; at most 4,096"),
    ("a 4 KB list of 1,024 items", {"--lr": "1," * 1023 + "1"}, INVALID,
     "the list has 1,024 items; at most 1,000"),
    ("a 10^9-step range", {"--lr": "1..1000000000"}, INVALID,
     "the range has 1,000,000,000 values; at most 1,000"),
    ("a 30-digit range", {"--lr": "1..9" + "9" * 29}, INVALID, "at most 15 digits"),
    ("a 10^9-point log range", {"--lr": "{1e-9..1 log 1000000000}"}, INVALID,
     "at most 1,000 values"),
    ("an infinite spaced range", {"--lr": "{1..1e999 lin 3}"}, INVALID, "finite numbers"),
    ("a product of 1,024 combinations", {"--lr": "1..32", "--seed": "1..32"}, INVALID,
     "the sweep has 1,024 combinations; at most 1,000"),
    ("a sweep beside a NUL", {"--lr": "1..3", "--seed": "\x00"}, INVALID, "NUL character"),
    ("RTL override", {"--lr": "\u202eexe.txt"}, VALID, (("lr", "\u202eexe.txt"),)),
    ("Arabic text", {"--lr": "مرحبا"}, VALID, (("lr", "مرحبا"),)),
    ("a bell", {"--lr": "a\x07b"}, INVALID, "control character U+0007"),
    ("an escape sequence", {"--lr": "\x1b[2J"}, INVALID, "control character U+001B"),
    ("DEL", {"--lr": "a\x7f"}, INVALID, "control character U+007F"),
    ("a lone surrogate", {"--lr": "\ud800"}, INVALID, "U+D800, which is not valid text"),
    ("tab and line breaks", {"--lr": "a\tb\nc\r\nd"}, VALID, (("lr", "a\tb\nc\r\nd"),)),
    ("a shell substitution", {"--lr": "$(id)"}, VALID, (("lr", "$(id)"),)),
    ("backticks and a pipe", {"--lr": "`id` | sh"}, VALID, (("lr", "`id` | sh"),)),
    ("a leading dash", {"--lr": "-rf"}, VALID, (("lr", "-rf"),)),
    ("an option as a value", {"--lr": "--help"}, VALID, (("lr", "--help"),)),
    ("a formula's text", {"--lr": "=HYPERLINK(\"http://x\")"}, VALID,
     (("lr", "=HYPERLINK(\"http://x\")"),)),
    ("an unsaved formula", {"--lr": UnsavedFormula("B2", "=A1*2")}, INVALID,
     "holds the formula =A1*2 but the file has no computed value"),
    ("a 10 KB job", {"job": "j" * 10_240}, INVALID, "the job cell holds 10,240 characters"),
    ("a 10 KB where", {"where": "w" * 10_240}, INVALID, "the where cell holds 10,240 characters"),
    ("a NUL in the action", {"action": "run\x00"}, INVALID, "the action cell holds a NUL"),
    ("a 10 KB id", {"id": "i" * 10_240}, VALID, ()),  # foreign text: the core's "clear the id"
]


def corpus_table() -> Table:
    rows = []
    for _, cells, _, _ in CORPUS:
        row: list = [None] * len(HEADER)
        row[0] = "fake"
        for name, value in cells.items():
            if isinstance(name, tuple):  # (header, which one of several)
                index = [i for i, h in enumerate(HEADER) if h == name[0]][name[1]]
            else:
                index = HEADER.index(name)
            row[index] = value
        rows.append(row)
    return Table(header=HEADER, rows=rows)


def test_every_hostile_cell_gives_an_exact_value_or_invalid_with_the_reason():
    table = corpus_table()
    assert header_problem(table) is None  # the table is usable; its bad columns are reported
    assert len(header_problems(table)) == 4
    experiments = {e.row: e for e in parse_table(table, ["fake"])}
    assert sorted(experiments) == list(range(2, len(CORPUS) + 2))
    for row, (what, _, outcome, detail) in enumerate(CORPUS, start=2):
        e = experiments[row]
        if outcome == VALID:
            assert e.error is None, (what, e.error)
            assert e.params == detail, what
            assert param_argv(e.params) == [x for n, v in detail for x in (f"--{n}", v)], what
            assert not e.is_sweep, what
        else:
            assert e.error is not None and detail in e.error, (what, e.error)
            assert len(e.error) < 600, (what, len(e.error))
            assert not e.is_sweep, what  # a bad row never expands
    assert experiments[2].key == experiment_key("fake", [("lr", "0.1"), ("seed", "3")])


def test_an_unsaved_formula_is_invalid_every_cycle_with_the_same_reason():
    table = corpus_table()
    row = 2 + [what for what, *_ in CORPUS].index("an unsaved formula")
    first, second = ({e.row: e for e in parse_table(table, ["fake"])}[row] for _ in range(2))
    assert first.error == second.error and "open the workbook" in first.error


def test_the_cycle_writes_every_reason_bounded_and_touches_no_user_cell():
    table = corpus_table()
    experiments = parse_table(table, ["fake"])
    decided = plan(experiments, {}, {}, [], POLICY, NOW)
    invalid_rows = {row for row, (status, _) in decided.notes.items() if status == Status.INVALID}
    foreign_id = 2 + [what for what, *_ in CORPUS].index("a 10 KB id")
    assert invalid_rows == {r for r, c in enumerate(CORPUS, start=2) if c[2] == INVALID} | {
        foreign_id}  # the core's rule for text sheetrunner never wrote: "clear the id cell"
    view = SheetView(SheetConfig(path=Path("x.xlsx")))
    change = view.change(table, experiments, decided, decided.runs, NOW, {})
    for update in change.rows:
        assert set(update.cells) <= {"id", "status", "host", "attempt", "started", "elapsed",
                                     "metrics", "message", "log"}
        assert all(len(str(v)) <= 2000 for v in update.cells.values())
        assert all("\x00" not in str(v) for v in update.cells.values())
    assert change.new_columns == ["host", "attempt", "started", "elapsed", "metrics", "log"]


def _fastest(action, repeat: int = 30) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - start)
    return best


def _refused(text: str) -> None:
    with pytest.raises(SweepError):
        sweeps.values(text)


def test_big_and_pathological_sweeps_are_refused_about_as_fast_as_a_small_one():
    """Linear and bounded: no cell makes parsing slow. Ratios only, no absolute times."""
    small = _fastest(lambda: _try("0.1, 0.01, 0.001"))
    for what, cell in {"a 48 KB list": BIG_SWEEP, "a 10^9-step range": "1..1000000000",
                       "a 10^9-point log range": "{1e-9..1 log 1000000000}"}.items():
        ratio = _fastest(lambda cell=cell: _try(cell)) / small
        assert ratio < 10, (what, ratio)  # refused before any value is made
    table = Table(header=["job", "--lr"], rows=[["fake", BIG_SWEEP]])
    small_table = Table(header=["job", "--lr"], rows=[["fake", "0.1, 0.01, 0.001"]])
    ratio = _fastest(lambda: parse_table(table, ["fake"])) / _fastest(
        lambda: parse_table(small_table, ["fake"]))
    assert ratio < 10, ratio
    # Just under the length limit, shaped to make a backtracking parser quadratic: no
    # slower than the most work a valid cell of that size asks for (a list of 680 values).
    largest_valid = _fastest(lambda: _try(", ".join(["0.01"] * 680)))
    for what, cell in {"dots": "{" + "." * 4000 + " log 3}", "digits": "1" * 4090 + "..",
                       "spaces": "{1" + " " * 4000 + ".. 2 lin 3}x",
                       "braces": "{" * 4000 + "1..2 lin 3}", "commas": "," * 4000}.items():
        ratio = _fastest(lambda cell=cell: _try(cell)) / largest_valid
        assert ratio < 5, (what, ratio)  # a quadratic parse would be ~1000x


def _try(cell: str) -> None:
    try:
        sweeps.values(cell)
    except SweepError:
        pass


def test_the_sweep_module_refuses_alone_what_the_schema_refuses_first():
    _refused(BIG_SWEEP)
    _refused("1..1000000000")
    _refused("{1e-9..1 log 1000000000}")
    assert len(sweeps.values("1..1000")) == MAX_CHILDREN
    assert len(sweeps.values(",".join(["1"] * MAX_CHILDREN))) == MAX_CHILDREN


def test_an_expanded_sweep_row_edited_into_a_bad_one_never_passes_its_sweep_id_as_a_run_id():
    header = ["job", "--lr", "--seed", "id"]
    table = Table(header=header, rows=[["fake", "1..3", "\x00", "sweep-1234abcd"],
                                       ["fake", "5..1", None, "sweep-1234abcd"],
                                       ["fake", "1..3", None, "sweep-1234abcd"]])
    still, broken, fine = parse_table(table, ["fake"])
    assert still.run_id == "sweep-1234abcd" and still.is_sweep  # its children carry on
    assert broken.run_id is None and broken.foreign_id == "sweep-1234abcd"
    assert "backwards" in broken.error and not broken.is_sweep
    assert fine.run_id == "sweep-1234abcd" and len(fine.children) == 3 and fine.error is None
