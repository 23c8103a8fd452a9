"""Metrics the sheet shows: per-metric columns with their best, a curve per row, `plot`."""

from __future__ import annotations

import subprocess
import sys

import openpyxl
from helpers import HEADER, local_config, write_workbook
from test_daemon_local import all_in, cycle_until

from sheetrunner.daemon import build
from sheetrunner.plot import series, text_lines
from sheetrunner.sheet.schema import best_is_lowest
from sheetrunner.sheet.table import Sparkline

EXTRA = """
[sheet]
"""


def metric_config(tmp_path, curve: bool = True):
    config = local_config(tmp_path)
    text = config.path.read_text().replace(
        'path = "experiments.xlsx"',
        'path = "experiments.xlsx"\nmetric_columns = ["loss"]' + ('\ncurve = "loss"' if curve else ""))
    config.path.write_text(text)
    from sheetrunner import config as config_module

    return config_module.load(config.path)


def test_metric_columns_show_latest_and_best_and_the_curve(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [["fake", 6, 0.01, None, 0]])
    daemon = build(metric_config(tmp_path))
    rows = cycle_until(daemon, all_in("succeeded"))
    row = rows[0]
    assert abs(row["loss"] - 1 / 6) < 1e-12 and abs(row["best loss"] - 1 / 6) < 1e-12  # lowest
    assert row["curve"] == Sparkline((1.0, 0.5, 1 / 3, 0.25, 0.2, 1 / 6), "", 0).text()
    book = openpyxl.load_workbook(tmp_path / "experiments.xlsx")
    assert book["_metrics"].sheet_state == "hidden"
    assert [c.value for c in book["_metrics"][2]][:3] == [row["id"], 1.0, 0.5]
    assert daemon.cycle().cells_written == 0  # nothing new: no write, curve included


def test_best_is_lowest_for_losses_and_errors_only():
    assert best_is_lowest("loss") and best_is_lowest("val_error") and not best_is_lowest("acc")


def test_the_google_sparkline_formula_points_at_the_run_row_of_the_hidden_tab():
    assert Sparkline((1, 2, 3), "_metrics", 5).formula() == "=SPARKLINE('_metrics'!B5:D5)"
    assert Sparkline(tuple(range(30)), "_metrics", 2).formula().endswith("!B2:AE2)")


def test_plot_writes_a_png_and_draws_in_the_terminal(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER,
                   [["fake", 5, 0.01, None, 0], ["fake", 3, 0.01, None, 0]])
    daemon = build(local_config(tmp_path))
    rows = cycle_until(daemon, all_in("succeeded"))
    ids = [r["id"] for r in rows]
    cfg = str(daemon.config.path)
    png = tmp_path / "curve.png"
    done = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "plot", "-c", cfg, *ids,
                           "--metric", "loss", "-o", str(png)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    shown = subprocess.run([sys.executable, "-m", "sheetrunner.cli", "plot", "-c", cfg, ids[0]],
                           capture_output=True, text=True)
    assert "loss" in shown.stdout and "last=0.2" in shown.stdout


def test_text_plot_of_a_series():
    points = series([{"step": 1, "acc": 0.5}, {"step": 2, "acc": 0.9}, {"loss": 1}], "acc")
    assert points == [(1.0, 0.5), (2.0, 0.9)]
    (line,) = text_lines({"r-1": points}, "acc")
    assert line.startswith("r-1  ▁█") and "max=0.9" in line
