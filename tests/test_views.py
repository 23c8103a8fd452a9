"""What `ps` and `pool` print, rendered to text as a person sees it."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone

from rich.console import Console

from sheetrunner.config import HostConfig
from sheetrunner.model import Accelerator, HostObservation, Run, Status
from sheetrunner.views import (
    format_moment,
    pool_json,
    pool_rows,
    pool_table,
    ps_entries,
    ps_filter,
    ps_table,
    runs_table,
)
from tests.helpers import make_run

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


def render(table, width: int = 200) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(table)
    return out.getvalue()


def run(run_id: str, host: str, accelerators: tuple[str, ...], gpus: int = 1,
        params=(("lr", "0.1"),), status: Status = Status.RUNNING, row: int = 3,
        message: str = "", job: str = "digits") -> Run:
    return make_run(run_id, "k", job, params, gpus, None, status, NOW, NOW,
               attempt=2, host=host, accelerators=accelerators, attempt_started_at=NOW,
               metrics={"step": 7, "acc": 0.91}, row=row, message=message)


def test_ps_shows_each_run_with_status_host_attempt_and_metrics():
    text = render(runs_table([run("abc-1", "gpu-a", ("0",))], now=NOW + timedelta(minutes=3),
                             console=Console(width=200), tz=UTC))
    assert "abc-1" in text and "running" in text and "gpu-a" in text
    assert "3m" in text and "step=7 acc=0.91" in text


def test_times_carry_their_zone():
    assert format_moment(NOW, UTC) == "2026-01-01 12:00 UTC"
    plus_one = timezone(timedelta(hours=1))
    assert format_moment(NOW, plus_one) == "2026-01-01 13:00 +01:00"
    text = render(runs_table([run("abc-1", "gpu-a", ("0",))], now=NOW,
                             console=Console(width=200), tz=UTC))
    assert "2026-01-01 12:00 UTC" in text


def test_ps_shows_parameters_and_rows_without_a_run():
    noted = [{"row": 2, "job": "nope", "params": [["lr", "1"]], "status": "invalid",
              "message": "unknown job 'nope'"}]
    entries = ps_entries([run("abc-1", "gpu-a", ("0",), params=(("lr", "0.1"), ("seed", "0")))],
                         noted, NOW)
    assert [e["row"] for e in entries] == [2, 3]  # sheet order
    assert entries[0]["id"] is None and entries[0]["params"] == {"lr": "1"}
    text = render(ps_table(entries, Console(width=200), UTC))
    assert "lr=0.1 seed=0" in text and "invalid" in text and "unknown job 'nope'" in text
    assert "1 runs, 1 rows without a run" in text


def test_ps_filters_by_status_job_sweep_and_host():
    runs = [run("a-1", "gpu-a", ("0",)), run("b-1", "gpu-b", (), status=Status.FAILED),
            run("c-1", "gpu-a", (), job="lottery", status=Status.QUEUED)]
    runs[1].sweep_id = "sweep-x"  # what the store will keep (see views.run_json)
    noted = [{"row": 9, "job": "digits", "params": [], "status": "invalid", "message": "bad"}]
    entries = ps_entries(runs, noted, NOW)

    def ids(**filters) -> list:
        return [e["id"] for e in entries if ps_filter(**filters)(e)]

    assert ids(status=["failed,queued"]) == ["b-1", "c-1"]
    assert ids(status=["invalid"]) == [None]
    assert ids(job=["lottery"]) == ["c-1"]
    assert ids(host=["gpu-a"]) == ["a-1", "c-1"]
    assert ids(sweep=["sweep-x"]) == ["b-1"]
    assert ids(status=["running", "failed"], host=["gpu-b"]) == ["b-1"]


def _words(text: str) -> set[str]:
    return set(re.findall(r"\S+", text))


def test_ps_fits_80_columns_without_splitting_words():
    long_message = ("no host has 4 free GPUs with the label a100; free: gpu-a 1, gpu-b 0; "
                    "it starts once one frees up")
    runs = [run(f"1a2b3c4d-k7m2q{i}", f"gpu-server-{i}", ("0",),
                params=(("lr", "0.001"), ("seed", str(i)), ("batch_size", "256")),
                message=long_message, row=i + 2) for i in range(3)]
    noted = [{"row": 9, "job": "digits", "params": [["lr", "x"]], "status": "invalid",
              "message": "--lr: 'x' is not a number"}]
    text = render(ps_table(ps_entries(runs, noted, NOW), Console(width=80), UTC), width=80)
    lines = text.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, text
    shown = _words(text)
    for i in range(3):  # names a person copies are never broken
        assert f"1a2b3c4d-k7m2q{i}" in shown, text
    assert {"running", "invalid", "lr=0.001", "seed=0", "batch_size=256"} <= shown, text
    # every word shown is a whole word of some cell (or the header/title), never a piece
    cells = " ".join([long_message, "--lr: 'x' is not a number", "lr=x digits invalid",
                      *[f"1a2b3c4d-k7m2q{i} gpu-server-{i} lr=0.001 seed={i} batch_size=256"
                        for i in range(3)], "step=7 acc=0.91 running 2026-01-01 12:00 UTC",
                      "3 runs, 1 rows without a run id status row params message metrics",
                      "elapsed host job sweep started attempt 2 3 4 5 9 12:00"])
    pieces = shown - _words(cells) - {"━", "─"} - {w for w in shown if set(w) <= set("━─ ")}
    assert not pieces, (pieces, text)


def test_ps_keeps_all_columns_when_wide():
    text = render(ps_table(ps_entries([run("abc-1", "gpu-a", ("0",))], (), NOW),
                           Console(width=200), UTC))
    header = next(line for line in text.splitlines() if " status " in line)
    for column in ("id", "status", "row", "params", "metrics", "elapsed", "host", "job",
                   "started", "attempt"):
        assert column in header.split(), header


def test_pool_shows_models_memory_use_holders_and_down_hosts():
    hosts = [HostConfig("gpu-a", accelerators="auto", slots=2),
             HostConfig("gpu-b", accelerators=2), HostConfig("cpu", slots=4)]
    seen = {
        "gpu-a": HostObservation("gpu-a", True, NOW, load=1.25, disk_free_bytes=50 * 2**30,
                                 accelerators=(
                                     Accelerator("0", "NVIDIA A100", 40960, 81920, 97),
                                     Accelerator("1", "NVIDIA A100", 1024, 81920, 0, foreign=True),
                                 )),
        "gpu-b": HostObservation("gpu-b", False, NOW, error="timed out"),
        "cpu": HostObservation("cpu", True, NOW, load=0.5, disk_free_bytes=2**30),
    }
    runs = [run("abc-1", "gpu-a", ("0",)), run("cpu-1", "cpu", (), gpus=0)]
    entries = pool_json(hosts, seen, runs, {"gpu-b": NOW - timedelta(minutes=5)})
    assert [a["run"] for a in entries[0]["accelerators"]] == ["abc-1", None]
    assert entries[1]["unreachable_since"].startswith("2026-01-01T11:55")
    text = render(pool_table(entries, tz=UTC))
    assert "NVIDIA A100" in text and "40.0/80 GiB" in text and "97%" in text
    assert "another user's process" in text and "down since 2026-01-01 11:55 UTC" in text
    assert "1/4 slots: cpu-1" in text and "50.0 GiB" in text
    assert pool_rows(entries)[0][:3] == ["host", "state", "accelerator"]
