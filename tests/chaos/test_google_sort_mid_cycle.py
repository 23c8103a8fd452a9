"""Case 6 of the identity issue, end to end: a person sorts the Google Sheet between the
cycle's read and its write, every cycle, while rows are claimed, launched, running and
finishing. The daemon talks to the Sheets API emulator over real HTTP through gspread;
the fault is injected at the moment the old code was exposed (while the hosts are probed,
after the read, before the write)."""

from __future__ import annotations

import time

from sheetrunner.daemon import build
from tests.chaos.lab import HEADER, all_final, row
from tests.helpers import guard_report, local_config

TAB = "experiments"


def test_rows_sorted_between_every_read_and_write_keep_their_runs(emu, tmp_path):
    guard = tmp_path / "guard"
    rows = [row(tag, steps=steps, sleep=0.1) for tag, steps in
            (("a", 8), ("b", 2), ("c", 14), ("d", 5), ("e", 1), ("f", 10))]
    key = emu.create_spreadsheet({TAB: [HEADER, *rows]})
    sheet = "\n".join([f'url = "https://docs.google.com/spreadsheets/d/{key}/edit"',
                       f'worksheet = "{TAB}"', 'credentials = "none"', f'endpoint = "{emu.url}"'])
    config = local_config(tmp_path, slots=3, sheet=sheet,
                          extra=f'\n[jobs.fake.env]\nFAKE_GUARD_DIR = "{guard}"\n')
    daemon = build(config)
    probe = daemon.pool.probe_all
    orders = iter(range(10_000))

    def probe_while_someone_sorts(*args, **kwargs):
        n = next(orders)
        emu.sort_rows("--tag" if n % 2 else "--steps", descending=bool(n % 3), tab=TAB)
        return probe(*args, **kwargs)

    daemon.pool.probe_all = probe_while_someone_sorts  # the fault, at the exposed moment
    deadline = time.monotonic() + 90
    try:
        while True:
            daemon.cycle()
            header, *shown = emu.values(tab=TAB)
            shown_rows = [dict(zip(header, r, strict=False)) for r in shown]
            if all_final(shown_rows) and all(r.get("id") for r in shown_rows):
                break
            assert time.monotonic() < deadline, shown_rows
            time.sleep(0.2)
        runs = daemon.store.runs()
    finally:
        daemon.close()
    assert [r["status"] for r in shown_rows] == ["succeeded"] * 6
    for shown_row in shown_rows:  # every row shows the run of its own experiment
        assert dict(runs[shown_row["id"]].spec.params)["tag"] == shown_row["--tag"]
    starts, concurrent = guard_report(guard)
    assert starts == dict.fromkeys("abcdef", 1) and concurrent == []
    assert not any(r.status.value == "stopped" for r in runs.values())
