"""sheetrunner's performance harness: ratios against a baseline measured in the same process.

    python bench/run.py            # all sections
    python bench/run.py core sheet # some of them
    python bench/run.py lab        # at lab scale (bench/bench_lab.py); `lab --quick` in CI

Absolute times depend on the machine; the ratios are what to compare between
commits. Not part of the test suite (CI-sized tests never time anything).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from sheetrunner.model import Experiment  # noqa: E402
from sheetrunner.reconcile import HostCapacity, Policy, plan  # noqa: E402
from sheetrunner.sheet.schema import OWNED_COLUMNS, experiment_key, parse_table, plan_write  # noqa: E402
from sheetrunner.sheet.table import Table  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def line(name: str, base: float, value: float, note: str = "") -> None:
    print(f"  {name:<44} {value * 1e3:9.2f} ms   x{value / base:6.2f} of baseline  {note}")


def experiments(n: int) -> list[Experiment]:
    return [Experiment(row=i + 2, run_id=None, job="digits", params=(("lr", str(i)),),
                       key=experiment_key("digits", [("lr", str(i))]), gpus=1) for i in range(n)]


def bench_core() -> None:
    """reconcile.plan over rows and hosts: it must stay far below a poll interval."""
    print("core: reconcile.plan, first cycle (claims and placement), 8 GPUs per host")
    now = datetime.now(UTC)

    def run(rows: int, hosts: int) -> float:
        caps = [HostCapacity(f"h{i}", accelerators=tuple(map(str, range(8)))) for i in range(hosts)]
        exps = experiments(rows)
        return best_of(lambda: plan(exps, {}, {}, caps, Policy(), now), 3)

    base = run(100, 10)
    line("100 rows, 10 hosts (baseline)", base, base)
    for rows, hosts in ((1000, 10), (2000, 50), (5000, 100)):
        line(f"{rows} rows, {hosts} hosts", base, run(rows, hosts), f"{rows // 100}x the rows")


def bench_rows() -> None:
    """Parsing the table and diffing owned cells: linear in rows."""
    print("rows: parse_table + plan_write")
    header = ["job", "--lr", "gpus", *OWNED_COLUMNS]

    def run(n: int) -> float:
        table = Table(header, [["digits", i * 0.001, 1] for i in range(n)])
        return best_of(lambda: plan_write(table, {
            e.row: {"status": "queued"} for e in parse_table(table, ["digits"])}))

    base = run(100)
    line("100 rows (baseline)", base, base)
    for n in (1000, 10000):
        line(f"{n} rows", base, run(n), f"{n // 100}x the rows")


def bench_workbook() -> None:
    """The local workbook: read + write a cycle, at 10 and 2,000 rows."""
    from helpers import write_workbook

    from sheetrunner.sheet.table import RowUpdate, SheetWrite
    from sheetrunner.sheets.workbook import Workbook

    print("workbook: one read and one write of a status cell")
    header = ["job", "--lr", "gpus", *OWNED_COLUMNS]
    with tempfile.TemporaryDirectory() as tmp:
        def run(n: int) -> float:
            path = write_workbook(Path(tmp) / f"w{n}.xlsx", header,
                                  [["digits", i, 1, f"r-{i}"] for i in range(n)])
            book = Workbook(path)
            change = SheetWrite(rows=[RowUpdate(2, "r-0", {"status": "running"}, fill="C9DAF8")])
            return best_of(lambda: (book.read(), book.write(change)), 3)

        base = run(10)
        line("10 rows (baseline)", base, base)
        line("2000 rows", base, run(2000), "openpyxl loads the whole file: linear")


def bench_google() -> None:
    """Google backend against the emulator: requests per cycle and time at 10 vs 2,000 rows."""
    from sheets_emulator import SheetsEmulator

    from sheetrunner.sheet.table import RowUpdate, SheetWrite
    from sheetrunner.sheets.google import GoogleSheet

    print("google (emulator on loopback): one read + one write per cycle")
    header = ["job", "--lr", "gpus", *OWNED_COLUMNS]
    with SheetsEmulator() as emu:
        def run(n: int) -> tuple[float, dict]:
            key = emu.create_spreadsheet({"experiments": [header, *[["digits", i, 1, f"r-{i}"]
                                                                    for i in range(n)]]})
            sheet = GoogleSheet(key, "experiments", "none", emu.url)
            change = SheetWrite(rows=[RowUpdate(2, "r-0", {"status": "running"}, fill="C9DAF8")])
            emu.reset_counts()
            took = best_of(lambda: (sheet.read(), sheet.write(change)), 3)
            return took, dict(emu.counts)

        base, _ = run(10)
        line("10 rows (baseline)", base, base)
        took, counts = run(2000)
        line("2000 rows", base, took, f"requests for 3 cycles: read={counts.get('read')} "
                                      f"write={counts.get('write')}")


def bench_jobs() -> None:
    """The GPU speed-up flags of the example jobs, each against the plain run."""
    import subprocess

    try:
        import torch
    except ImportError:
        print("jobs: torch is not installed; skipped")
        return
    print("jobs: digits.py, 3 epochs, wall time of the whole process")
    variants = [("plain (baseline)", [])]
    if torch.cuda.is_available():
        variants += [("--amp bf16", ["--amp", "bf16"]), ("--channels-last 1", ["--channels-last", "1"]),
                     ("--cudnn-benchmark 1", ["--cudnn-benchmark", "1"]),
                     ("all three", ["--amp", "bf16", "--channels-last", "1", "--cudnn-benchmark", "1"])]
    else:
        print("  no CUDA device here: the speed-up flags only act on a GPU, so only the "
              "baseline is measured (run this on a GPU host to compare them)")
    base = None
    for name, flags in variants:
        with tempfile.TemporaryDirectory() as tmp:
            def once(flags=flags, tmp=tmp) -> None:
                env = {"SHEETRUNNER_RUN_DIR": tmp, "PATH": "/usr/bin:/bin"}
                subprocess.run([sys.executable, str(ROOT / "jobs" / "digits.py"), "--epochs", "3",
                                *flags], check=True, capture_output=True, env=env)
            took = statistics.median([best_of(once, 1) for _ in range(2)])
        base = base or took
        line(name, base, took)


from bench_lab import bench_lab  # noqa: E402
from bench_pool import bench_pool  # noqa: E402
from bench_slurm import bench_slurm  # noqa: E402

SECTIONS = {"core": bench_core, "rows": bench_rows, "workbook": bench_workbook,
            "google": bench_google, "jobs": bench_jobs, "pool": bench_pool,
            "slurm": bench_slurm}

if __name__ == "__main__":
    # `lab [PART ...] [--quick]`: sheetrunner at lab scale (bench/bench_lab.py), its own args.
    if sys.argv[1:2] == ["lab"]:
        bench_lab(sys.argv[2:])
        sys.exit(0)
    for name in sys.argv[1:] or list(SECTIONS):
        SECTIONS[name]()
        print()
