"""sheetrunner at lab scale: the probe, the sheet, latency, fill, the daemon's own cost, recovery.

    python bench/run.py lab            # every part, full sizes (docs/performance.md)
    python bench/run.py lab --quick    # small sizes: CI's smoke test of the harness

Each part prints its rows and a baseline from the same run; `results` collects
them for docs/performance.md and the plot (bench/plot_lab.py). Nothing here is
a test: it asserts only that the harness works (a probe that fails stops it).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from bench_pool import Counted, host_config, host_cpu_s  # noqa: E402

from sheetrunner.config import DaemonConfig, SshConfig  # noqa: E402
from sheetrunner.daemon import transport_for  # noqa: E402
from sheetrunner.pool.hosts import HostAgent, Pool  # noqa: E402

GPUS = 2
NS = "benchns000013"
QUOTA_PER_MIN = 60  # Google Sheets API: read and write requests per minute per user
results: dict[str, Any] = {}


def median_of(fn: Callable[[], float], runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- 1. the probe cycle ------------------------------------------------------------------------


def pool_of(lab, hosts: list, resident: bool) -> tuple[Pool, list[Counted]]:
    ssh = SshConfig(known_hosts=str(lab.known_hosts), connect_timeout_s=10, config_file=None)
    config = types.SimpleNamespace(ssh=ssh)
    agents, counters = [], []
    for host in hosts:
        cfg = host_config(host)
        transport = transport_for(config, cfg)  # type: ignore[arg-type]
        counters.append(Counted(transport))
        agents.append(HostAgent(cfg, transport, 60, NS, resident=resident))
    return Pool(agents, DaemonConfig().max_parallel_hosts), counters


def probe_cycle(pool: Pool) -> float:
    start = time.perf_counter()
    seen = pool.probe_all({}, datetime.now(UTC))
    took = time.perf_counter() - start
    bad = [o for o in seen.values() if not o.reachable or len(o.accelerators) != GPUS]
    if bad:
        raise RuntimeError(f"probe failed: {bad[0]}")
    return took


def smi_calls(hosts: list) -> int:
    return sum(len(Path(h.dir / "smi-calls.log").read_text().splitlines()) for h in hosts)


def measure_pool(lab, hosts: list, resident: bool, warm: int) -> dict[str, float]:
    pool, counters = pool_of(lab, hosts, resident)
    try:
        probe_cycle(pool)  # connect, upload, start the resident agents
        probe_cycle(pool)
        for c in counters:
            c.runs = c.puts = 0
        cpu, smi = host_cpu_s(hosts), smi_calls(hosts)
        cycles = [probe_cycle(pool) for _ in range(warm)]
        n = len(hosts) * warm
        return {
            "warm_s": statistics.median(cycles),
            "host_cpu_ms": (host_cpu_s(hosts) - cpu) / n * 1e3,
            "execs": sum(c.runs for c in counters) / n,
            "smi": (smi_calls(hosts) - smi) / n,
        }
    finally:
        pool.close()


def naive_cycle(lab, hosts: list, runs: int) -> dict[str, float]:
    """A fresh OpenSSH client per host, one host after the other, running the same probe."""
    agent = HostAgent(host_config(hosts[0]), None, namespace=NS)  # type: ignore[arg-type]

    def probe(host) -> None:
        agent.config = host_config(host)
        remote = shlex.join(agent.argv(agent._where("probe")))
        out = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(host.port), "-i", str(lab.client_key),
             "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", f"{host.user}@{host.address}",
             remote], input=b"{}", capture_output=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ssh probe of {host.name} failed: {out.stderr[-300:]!r}")

    def cycle() -> float:
        start = time.perf_counter()
        for host in hosts:
            probe(host)
        return time.perf_counter() - start

    cpu = host_cpu_s(hosts)
    took = median_of(cycle, runs)
    time.sleep(0.2)
    return {"naive_s": took, "naive_cpu_ms": (host_cpu_s(hosts) - cpu) / (len(hosts) * runs) * 1e3}


def bench_probe(quick: bool) -> None:
    from sshd import SshdLab

    sizes = (4,) if quick else (4, 16, 64)
    warm = 2 if quick else 5
    print(f"1. probe cycle over N real sshd hosts ({GPUS} fake GPUs each, fake nvidia-smi), "
          f"max_parallel_hosts={DaemonConfig().max_parallel_hosts}")
    print(f"  {'hosts':>5} {'resident':>9} {'exec':>9} {'naive':>9} {'naive/res':>9} "
          f"{'host CPU ms res/exec/naive':>27} {'execs/h':>7} {'smi/h':>6}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        lab = SshdLab(Path(tmp) / "lab")
        try:
            for i in range(max(sizes)):
                host = lab.add_host(f"h{i:02d}", gpus=GPUS)
                state = host._gpu_state()
                state["calls"] = str(host.dir / "smi-calls.log")
                host._save_gpu_state(state)
                (host.dir / "smi-calls.log").write_text("")
            hosts = list(lab.hosts.values())
            for n in sizes:
                res = measure_pool(lab, hosts[:n], True, warm)
                exe = measure_pool(lab, hosts[:n], False, warm if n <= 16 else 2)
                naive = naive_cycle(lab, hosts[: min(n, 16)], 1 if quick or n > 16 else 2)
                if n > 16:  # the naive cycle is sequential: 16 hosts timed, scaled
                    naive["naive_s"] *= n / 16
                row = {"hosts": n, **res, "exec_s": exe["warm_s"], "exec_cpu_ms": exe["host_cpu_ms"],
                       "exec_smi": exe["smi"], **naive}
                rows.append(row)
                print(f"  {n:>5} {res['warm_s'] * 1e3:6.0f} ms {exe['warm_s'] * 1e3:6.0f} ms "
                      f"{naive['naive_s'] * 1e3:6.0f} ms {naive['naive_s'] / res['warm_s']:8.1f}x "
                      f"{res['host_cpu_ms']:9.1f} / {exe['host_cpu_ms']:5.0f} / "
                      f"{naive['naive_cpu_ms']:5.0f} {res['execs']:7.2f} {res['smi']:6.2f}",
                      flush=True)
        finally:
            lab.close()
    sim = simulated_cycle(256 if not quick else 64)
    print(f"  {sim['hosts']:>5} {sim['warm_s'] * 1e3:6.0f} ms   (simulated transport: "
          f"{sim['rtt_ms']:.0f} ms round trip, {sim['agent_ms']:.0f} ms agent work per probe)")
    results["probe"] = rows
    results["probe_sim"] = sim


def bench_agent_cpu(quick: bool) -> None:
    """The resident agent's own CPU per probe, read from /proc for its process: the part of
    a probe's host CPU that is sheetrunner's (no GPU query: no nvidia-smi, no NVML here)."""
    from sheetrunner.config import HostConfig
    from sheetrunner.pool.local import LocalTransport

    probes = 20 if quick else 200
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        config = HostConfig(name="local", local=True, root=tmp, python=sys.executable)
        agent = HostAgent(config, LocalTransport("local"), 30, NS)
        try:
            agent.probe(set())  # uploads, by exec
            agent.probe(set())  # starts the resident agent
            before = _proc_cpu_s(agent.resident.pid)
            start = time.perf_counter()
            for _ in range(probes):
                agent.probe(set())
            wall = (time.perf_counter() - start) / probes
            cpu = (_proc_cpu_s(agent.resident.pid) - before) / probes
        finally:
            agent.close()
    print(f"1b. resident agent's own CPU per probe (no runs, no GPU query): {cpu * 1e3:.2f} ms "
          f"CPU, {wall * 1e3:.2f} ms round trip through a local pipe ({probes} probes)")
    results["agent_cpu"] = {"cpu_ms": cpu * 1e3, "wall_ms": wall * 1e3, "probes": probes}


def _proc_cpu_s(pid: int | None) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SimStream:
    """A resident agent on a simulated host: one round trip and the agent's work per request."""

    ack_timeout_s = None

    def __init__(self, name: str, rtt_s: float, work_s: float) -> None:
        self.name, self.rtt_s, self.work_s = name, rtt_s, work_s
        self.lines: list[bytes] = [json.dumps({"hello": "", "pid": 1}).encode()]
        self.alive = True

    def write(self, data: bytes, deadline: float) -> None:
        request = json.loads(data)
        time.sleep(self.rtt_s + self.work_s)
        out = json.dumps({"boot_id": "b", "gpus": [
            {"index": str(i), "uuid": f"{self.name}-{i}", "name": "sim", "healthy": True}
            for i in range(GPUS)], "attempts": []})
        self.lines += [json.dumps({"id": request["id"], "ack": True}).encode(),
                       json.dumps({"id": request["id"], "exit": 0, "out": out}).encode()]

    def read_line(self, deadline: float) -> bytes:
        return self.lines.pop(0)

    def close(self) -> None:
        self.alive = False


class SimTransport:
    def __init__(self, name: str, rtt_s: float, work_s: float) -> None:
        self.host, self.rtt_s, self.work_s = name, rtt_s, work_s

    def run(self, argv, *, stdin=b"", timeout_s=30.0):
        from sheetrunner.pool.transport import CommandResult

        return CommandResult(0, b"{}", b"")

    def open_stream(self, argv, *, timeout_s=30.0) -> SimStream:
        return SimStream(self.host, self.rtt_s, self.work_s)

    def put_file(self, path, data, mode=0o644) -> None: ...

    def close(self) -> None: ...


def simulated_cycle(n: int, rtt_ms: float = 20.0, agent_ms: float = 5.0) -> dict[str, float]:
    """Pool.probe_all over `n` simulated hosts whose resident agents answer after a round
    trip plus the agent's work (labelled simulated: no sshd, no network)."""
    from sheetrunner.config import HostConfig
    from sheetrunner.remote import agent_name

    agents = []
    for i in range(n):
        transport = SimTransport(f"s{i:03d}", rtt_ms / 1e3, agent_ms / 1e3)
        agent = HostAgent(HostConfig(name=f"s{i:03d}", root="/r", python="python3"), transport,
                          30, NS)  # type: ignore[arg-type]
        agent.resident.expected_name = ""
        agent._agent_present = True
        agents.append(agent)
    pool = Pool(agents, DaemonConfig().max_parallel_hosts)
    probe_cycle(pool)
    assert all(a.resident.requests for a in agents), "the simulated agents were not asked"
    _ = agent_name
    return {"hosts": n, "warm_s": median_of(lambda: probe_cycle(pool), 3), "rtt_ms": rtt_ms,
            "agent_ms": agent_ms}


# -- 2. sheet calls per cycle -----------------------------------------------------------------


def bench_sheet_calls(quick: bool) -> None:
    from sheets_emulator import SheetsEmulator

    from sheetrunner.sheet.schema import OWNED_COLUMNS
    from sheetrunner.sheet.table import RowUpdate, SheetWrite
    from sheetrunner.sheets.google import GoogleSheet

    sizes = (10, 100) if quick else (10, 100, 1000, 10000)
    header = ["job", "--lr", "gpus", *OWNED_COLUMNS]
    print("2. Google Sheets calls per cycle (emulator): idle (nothing to write) and busy "
          "(every row's status and metrics change); baseline: one update call per changed cell")
    print(f"  {'rows':>6} {'idle':>5} {'busy':>5} {'':>22} {'per-cell busy':>10}")
    rows = []
    with SheetsEmulator() as emu:
        for n in sizes:
            key = emu.create_spreadsheet({"experiments": [header, *[
                ["digits", i, 1, f"r-{i}"] for i in range(n)]]})
            sheet = GoogleSheet(key, "experiments", "none", emu.url)
            sheet.read()  # the metadata reads made once at start
            emu.reset_counts()
            sheet.read()
            idle = _requests(emu)
            change = SheetWrite(rows=[RowUpdate(i + 2, f"r-{i}", {"status": "running",
                                                                  "metrics": f"loss={i}"})
                                      for i in range(n)])
            emu.reset_counts()
            sheet.read()
            sheet.write(change)
            busy = _requests(emu)
            per_cell = 1 + 2 * n  # one read, then one update per changed cell
            rows.append({"rows": n, "idle": sum(idle), "busy": sum(busy), "busy_reads": busy[0],
                         "busy_writes": busy[1], "per_cell": per_cell})
            print(f"  {n:>6} {sum(idle):>5} {sum(busy):>5} ({busy[0]} reads, {busy[1]} writes) "
                  f"{per_cell:>10}", flush=True)
    for poll in (15, 5):
        cycles = 60 / poll
        reads = max(r["busy_reads"] for r in rows) * cycles
        writes = max(r["busy_writes"] for r in rows) * cycles
        cells = int(QUOTA_PER_MIN / cycles)
        print(f"  poll {poll:>2} s, busy every cycle: sheetrunner {reads:.0f} reads and "
              f"{writes:.0f} writes a minute at every size measured (quota {QUOTA_PER_MIN} "
              f"each); a per-cell client stays within it while at most {cells} cells change "
              f"per cycle (~{max(cells // 2, 0)} busy rows)")
    results["sheet_calls"] = rows


def _requests(emu) -> tuple[int, int]:
    """(reads, writes) the emulator answered since its counts were reset."""
    kinds = [r.kind for r in emu.log]
    reads = sum(1 for k in kinds if k == "read")
    return reads, len(kinds) - reads


# -- 3. row typed -> process running ---------------------------------------------------------


def bench_latency(quick: bool) -> None:
    import openpyxl
    from helpers import local_config, write_workbook

    from sheetrunner.daemon import build

    plan = [(1.0, 5)] if quick else [(2.0, 50), (15.0, 50)]
    print("3. row typed -> process running (local workbook, this machine as the host)")
    out = []
    for poll, count in plan:
        with tempfile.TemporaryDirectory(prefix="bench-lat-", ignore_cleanup_errors=True) as tmp:
            where = Path(tmp)
            job = where / "started.py"
            job.write_text("import sys, time\nopen(sys.argv[2], 'w').write(repr(time.time()))\n")
            config = local_config(where, slots=count)
            text = config.path.read_text().replace("poll_interval = 0.5", f"poll_interval = {poll}")
            text = text.replace(f'"{ROOT / "tests" / "jobs" / "fake_job.py"}"', f'"{job}"')
            config.path.write_text(text)
            write_workbook(where / "experiments.xlsx", ["job", "--out", "gpus"], [])
            daemon = build(__import__("sheetrunner.config", fromlist=["load"]).load(config.path))
            typed: dict[str, float] = {}
            stop = threading.Event()

            start = time.time()

            def typist(where=where, typed=typed, count=count, poll=poll, start=start) -> None:
                span = poll * (2 if count <= 10 else 4)
                for i, at in enumerate(sorted(random.uniform(0, span) for _ in range(count))):
                    time.sleep(max(0.0, start + at - time.time()))
                    path = where / "experiments.xlsx"
                    for _ in range(20):
                        try:
                            book = openpyxl.load_workbook(path)
                            book.worksheets[0].append(["fake", str(where / f"t{i}"), 0])
                            tmp_path = where / f".typed{i}.xlsx"
                            book.save(tmp_path)
                            os.replace(tmp_path, path)
                            typed[str(where / f"t{i}")] = time.time()
                            break
                        except Exception:
                            time.sleep(0.05)

            thread = threading.Thread(target=typist, daemon=True)
            thread.start()
            try:
                while not stop.is_set():
                    began = time.time()
                    daemon.cycle()
                    done = [p for p in typed if Path(p).exists()]
                    if not thread.is_alive() and len(done) == count:
                        break
                    if time.time() - start > poll * 12 + 120:
                        break
                    time.sleep(max(0.0, poll - (time.time() - began)))
            finally:
                daemon.close()
                time.sleep(1)  # the last supervisors write their exit files
            waits = sorted(float(Path(p).read_text()) - t for p, t in typed.items()
                           if Path(p).exists())
            p50 = waits[len(waits) // 2] if waits else float("nan")
            p95 = waits[min(len(waits) - 1, int(len(waits) * 0.95))] if waits else float("nan")
            out.append({"poll": poll, "rows": count, "started": len(waits), "p50": p50, "p95": p95})
            print(f"  poll {poll:>4.0f} s, {count} rows: {len(waits)} started; p50 {p50:.2f} s, "
                  f"p95 {p95:.2f} s (goal p95 <= {poll + 1:.0f} s)", flush=True)
    results["latency"] = out


# -- 4. fill time ------------------------------------------------------------------------------


def bench_fill(quick: bool) -> None:
    from fakes import HEADER, HOSTS_EXTRA, FakePool, row
    from helpers import Clock, local_config

    from sheetrunner.daemon import Daemon, open_store
    from tests.contract.memory_sheet import MemoryBook, MemorySheet

    hosts, gpus, rows = (10, 8, 100) if quick else (100, 8, 1000)
    print(f"4. fill: {rows} 1-GPU rows on {hosts} simulated hosts x {gpus} GPUs (the real "
          "daemon, a fake pool, a memory sheet)")
    cycles = busy = 0
    with tempfile.TemporaryDirectory(prefix="bench-fill-") as tmp:
        extra = "".join(HOSTS_EXTRA.format(name=f"g{i:03d}", slots=gpus, accelerators=gpus,
                                           labels=f'"g{i:03d}"') for i in range(hosts))
        config = local_config(Path(tmp), extra=extra, slots=0, backoff=30)
        clock = Clock()
        book = MemoryBook(list(HEADER), [row(f"r{i}", gpus=1) for i in range(rows)])
        pool = FakePool(config.hosts, clock)
        daemon = Daemon(config, MemorySheet(book), pool, open_store(config),  # type: ignore[arg-type]
                        clock=clock)
        daemon.cycle()  # the lease cycle: nothing acts yet
        status = book.header.index("status")
        while busy < hosts * gpus and cycles < 10:
            clock.advance(3)
            started = time.perf_counter()
            daemon.cycle()
            cycles += 1
            busy = sum(1 for r in book.rows if len(r) > status
                       and r[status] in ("launching", "running"))
            print(f"  acting cycle {cycles}: {busy} of {hosts * gpus} accelerators busy "
                  f"({time.perf_counter() - started:.2f} s)", flush=True)
        daemon.close()
    results["fill"] = {"hosts": hosts, "gpus": gpus, "rows": rows, "cycles": cycles, "busy": busy}


# -- 5. the daemon's own cost ------------------------------------------------------------------


def bench_cost(quick: bool) -> None:
    n_rows, n_hosts = (200, 20) if quick else (10000, 500)
    print(f"5. the daemon's own cost: {n_rows} rows, {n_hosts} simulated hosts (fake pool); "
          f"RSS, CPU per idle and per busy cycle")
    out = [_cost_of(backend, n_rows, n_hosts, quick) for backend in ("workbook", "google")]
    for r in out:
        print(f"  {r['backend']:<8}: idle cycle {r['idle_cpu_s']:.3f} s CPU, busy cycle "
              f"{r['busy_cpu_s']:.3f} s CPU, RSS {r['rss_mb']:.0f} MB (goals: idle <= 0.2 s, "
              "RSS <= 200 MB)", flush=True)
    results["cost"] = out


def _cost_of(backend: str, n_rows: int, n_hosts: int, quick: bool) -> dict[str, Any]:
    """CPU per idle and busy cycle and RSS of a real Daemon on `backend` over a fake pool
    (each backend in a fresh process would be cleaner; RSS is the process's, so the
    second backend's figure includes what the first left allocated)."""
    from fakes import HOSTS_EXTRA, FakePool
    from helpers import Clock, local_config, write_workbook

    from sheetrunner.daemon import Daemon, open_store
    from sheetrunner.sheets.workbook import Workbook

    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        where = Path(tmp)
        extra = "".join(HOSTS_EXTRA.format(name=f"c{i:03d}", slots=4, accelerators=0,
                                           labels='"c"') for i in range(n_hosts))
        config = local_config(where, extra=extra, slots=0)
        header = ["job", "--tag", "gpus", "id", "status"]
        rows = [["fake", f"t{i}", 0, f"r-{i}", "succeeded"] for i in range(n_rows)]
        clock = Clock()
        pool = FakePool(config.hosts, clock)
        emu = None
        if backend == "workbook":
            path = write_workbook(where / "experiments.xlsx", header, rows)
            sheet: Any = Workbook(path)
        else:
            from sheets_emulator import SheetsEmulator

            from sheetrunner.sheets.google import GoogleSheet

            emu = SheetsEmulator()
            emu.__enter__()
            key = emu.create_spreadsheet({"experiments": [header, *rows]})
            sheet = GoogleSheet(key, "experiments", "none", emu.url)
        daemon = Daemon(config, sheet, pool, open_store(config), clock=clock)  # type: ignore[arg-type]
        try:
            for _ in range(3):  # lease, first acting cycle, settle
                clock.advance(3)
                daemon.cycle()
            if backend == "workbook":  # as the file will be 2 s after the last write
                os.utime(sheet.path, (time.time() - 60, time.time() - 60))
                daemon.cycle()
            idle, busy = [], []
            for _ in range(2 if quick else 3):
                clock.advance(3)
                before = cpu_s()
                daemon.cycle()
                idle.append(cpu_s() - before)
            for i in range(2 if quick else 3):
                _type_row(sheet, emu, backend, where, f"b{i}")
                clock.advance(3)
                before = cpu_s()
                daemon.cycle()
                busy.append(cpu_s() - before)
            rss = rss_mb()
        finally:
            daemon.close()
            if emu is not None:
                emu.__exit__(None, None, None)
    return {"backend": backend, "idle_cpu_s": statistics.median(idle),
            "busy_cpu_s": statistics.median(busy), "rss_mb": rss}


def _type_row(sheet, emu, backend: str, where: Path, tag: str) -> None:
    """A person adds a row: the cycle has something to do (claim, launch, write)."""
    if backend == "workbook":
        import openpyxl

        book = openpyxl.load_workbook(sheet.path)
        book.worksheets[0].append(["fake", tag, 0])
        book.save(sheet.path)
    else:
        emu.insert_row(2, ["fake", tag, 0], tab="experiments")


# -- 6. recovery -------------------------------------------------------------------------------


def bench_recovery(quick: bool) -> None:
    print("6. recovery (from docs/reliability.md, the chaos suite on real processes and sshd)")
    text = (ROOT / "docs" / "reliability.md").read_text()
    wanted = ("crash", "requeue", "repair")
    found = [line for line in text.splitlines() if line.startswith("|")
             and any(w in line.lower() for w in wanted)]
    for line in found[:8]:
        print("  " + line)
    results["recovery"] = found[:8]


PARTS = {"probe": bench_probe, "agent": bench_agent_cpu, "sheet": bench_sheet_calls, "latency": bench_latency,
         "fill": bench_fill, "cost": bench_cost, "recovery": bench_recovery}


def bench_lab(argv: list[str] | None = None) -> None:
    argv = list(argv or [])
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or list(PARTS)
    started = time.time()
    load = os.getloadavg()
    print(f"lab ({'quick' if quick else 'full'}): load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, "
          f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    results["meta"] = {"quick": quick, "load": load, "cpus": os.cpu_count()}
    for name in names:
        PARTS[name](quick)
        print(flush=True)
    results["meta"]["took_s"] = time.time() - started
    out = os.environ.get("SHEETRUNNER_BENCH_JSON")
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
    print(f"lab: {time.time() - started:.0f} s")
