"""The argv styles a row's cells pass: --NAME VALUE, NAME=VALUE, bare flags, quoted values."""

from __future__ import annotations

import pytest

from sheetrunner.argv import argv_items, param_argv
from sheetrunner.sheet.expansion import expand
from sheetrunner.sheet.schema import experiment_key, header_problems, parse_table
from sheetrunner.sheet.table import Table

HEADER = ["job", "--lr", "optimizer.momentum=", "+trainer.fast=", "--amp", "--milestones", "id"]


def parse(*rows: list) -> list:
    return parse_table(Table(header=HEADER, rows=[list(r) for r in rows]), ["train"])


@pytest.mark.parametrize(
    ("name", "value", "items"),
    [
        ("lr", "0.1", ["--lr", "0.1"]),
        ("lr=", "0.1", ["lr=0.1"]),
        ("--lr=", "-1", ["--lr=-1"]),
        ("amp", "true", ["--amp"]),
        ("amp", "TRUE", ["--amp"]),
        ("amp", "False", []),
        ("amp", '"true"', ["--amp", "true"]),  # quoted: a value, not a flag
        ("flag=", "true", ["flag=true"]),  # key=value columns pass booleans as text
        ("milestones", '"30,60,90"', ["--milestones", "30,60,90"]),
        ("cfg", '"{"a": [1, 2]}"', ["--cfg", '{"a": [1, 2]}']),
        ("name", '""quoted""', ["--name", '"quoted"']),
        ("name", "; rm -rf ~", ["--name", "; rm -rf ~"]),
    ],
)
def test_each_style_passes_its_argv_items(name, value, items):
    assert argv_items(name, value) == items


def test_a_row_of_every_style_becomes_the_documented_argv():
    (e,) = parse(["train", 0.1, 0.9, True, True, '"30,60,90"'])
    assert e.error is None and not e.is_sweep
    assert param_argv(e.params) == [
        "--lr",
        "0.1",
        "optimizer.momentum=0.9",
        "+trainer.fast=true",
        "--amp",
        "--milestones",
        "30,60,90",
    ]
    (off,) = parse(["train", 0.1, None, None, False])
    assert param_argv(off.params) == ["--lr", "0.1"]


def test_hashes_of_double_dash_columns_do_not_change():
    """Rows written before the styles existed keep their experiment hash (no re-runs)."""
    (e,) = parse_table(Table(["job", "--lr", "--seed"], [["digits", 0.1, 0]]), ["digits"])
    assert e.key == "c05eb9db1ac9132d" == experiment_key("digits", [("lr", "0.1"), ("seed", "0")])
    a, b = parse(["train", 0.1], ["train", None, None, None, None, None])
    assert a.key != b.key
    (kv,) = parse(["train", None, 0.1])
    assert kv.key != a.key  # lr= and --lr pass different argv: different experiments


def test_an_unquoted_comma_is_still_a_sweep_and_children_keep_the_header_style():
    table = Table(header=HEADER, rows=[["train", None, "0.8, 0.9", None, None, '"1,2"']])
    (e,) = parse_table(table, ["train"])
    assert e.is_sweep and len(e.children) == 2
    _, insert = expand(table, e)
    assert [c["optimizer.momentum="] for c in insert.rows] == ["0.8", "0.9"]
    assert all(c["--milestones"] == '"1,2"' for c in insert.rows)


def test_a_malformed_key_value_header_makes_rows_using_it_invalid():
    table = Table(header=["job", "a b="], rows=[["train", 1], ["train", None]])
    used, unused = parse_table(table, ["train"])
    assert "is not a key=value parameter" in (used.error or "")
    assert unused.error is None
    assert any("a b=" in line for line in header_problems(table))


def test_ps_shows_key_value_parameters_once_with_their_equals_sign():
    from sheetrunner.views import params_text

    assert params_text([("lr", "0.1"), ("model.depth=", "4")]) == "lr=0.1 model.depth=4"
