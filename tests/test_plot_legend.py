"""`sheetrunner plot` names runs by their parameters and draws them on one scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import HEADER, local_config, write_workbook

from sheetrunner import cli, plot


def test_runs_are_labelled_by_their_parameters_with_the_id_as_fallback():
    labels = plot.labels({"a-1": (("lr", "0.1"), ("seed", "0")), "b-1": (), "c-1": None})
    assert labels == {"a-1": "lr=0.1 seed=0", "b-1": "b-1", "c-1": "c-1"}
    twice = plot.labels({"a-1": (("lr", "0.1"),), "a-2": (("lr", "0.1"),)})  # a rerun
    assert twice == {"a-1": "lr=0.1 (a-1)", "a-2": "lr=0.1 (a-2)"}


def test_the_terminal_plot_puts_every_run_on_one_scale():
    curves = {"lr=0.1": [(0, 0.0), (1, 1.0)], "lr=0.01": [(0, 0.5), (1, 0.5)]}
    assert plot.scale(curves) == (0.0, 1.0)
    first, second = plot.text_lines(curves, "acc")
    assert first.startswith("lr=0.1   ▁█")  # labels padded so the lines start together
    # a flat run at 0.5 sits mid-way, not at the bottom of a scale of its own
    assert second.startswith("lr=0.01  " + plot.sparkline([0.5, 0.5], 0.0, 1.0))
    assert plot.sparkline([0.5, 0.5], 0.0, 1.0) not in ("▁▁", "██")


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    """`plot` on two runs whose histories and parameters come from a fake host and store."""
    write_workbook(tmp_path / "experiments.xlsx", HEADER, [])
    config = local_config(tmp_path)
    histories = {"r-1": [{"step": 1, "acc": 0.2}, {"step": 2, "acc": 0.4}],
                 "r-2": [{"step": 1, "acc": 0.8}, {"step": 2, "acc": 0.9}]}
    params = {"r-1": (("lr", "0.1"), ("seed", "0")), "r-2": None}
    monkeypatch.setattr(cli, "_histories", lambda config, ids: (histories, params))
    return str(config.path)


def test_the_png_legend_names_runs_by_their_parameters(two_runs, tmp_path, monkeypatch):
    drawn = {}

    def write_png(curves, metric, path: Path):
        drawn.update(curves)
        return path

    monkeypatch.setattr(plot, "write_png", write_png)
    assert cli.main(["plot", "r-1", "r-2", "-c", two_runs, "-o", str(tmp_path / "x.png")]) == 0
    assert list(drawn) == ["lr=0.1 seed=0", "r-2"]


def test_the_terminal_plot_names_runs_and_says_its_scale(two_runs, capsys):
    assert cli.main(["plot", "r-1", "r-2", "-c", two_runs]) == 0
    out = capsys.readouterr().out
    assert "acc (one scale for all runs: 0.2 to 0.9)" in out
    lines = out.splitlines()
    assert any(line.startswith("lr=0.1 seed=0  ") for line in lines), out
    assert any(line.startswith("r-2            ") for line in lines), out


def test_a_real_png_has_the_parameters_in_its_legend(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import pyplot as plt

    seen = []
    original = plt.Axes.legend

    def legend(self, *args, **kwargs):
        seen.extend(self.get_legend_handles_labels()[1])
        return original(self, *args, **kwargs)

    plt.Axes.legend = legend
    try:
        plot.write_png({"lr=0.1 seed=0": [(1, 0.2), (2, 0.4)]}, "acc", tmp_path / "x.png")
    finally:
        plt.Axes.legend = original
    assert seen == ["lr=0.1 seed=0"] and (tmp_path / "x.png").stat().st_size > 1000
