"""The pool probe against real sshd hosts: sheetrunner's cycle vs a fresh `ssh` per host.

    python bench/run.py pool

Starts 32 fake hosts (tests/sshd.py: a real OpenSSH sshd each, fake nvidia-smi
with 2 GPUs) and measures, at 4, 16 and 32 of them:

- sheetrunner: `Pool.probe_all` over `HostAgent`s on `SshTransport`s, built as
  the daemon builds them (`transport_for`, the default `max_parallel_hosts`).
  The cold cycle connects, uploads the agent and probes; warm cycles reuse the
  connections. The SSH execs per host per cycle are counted on the transports.
- naive, in the same run: each host in turn, a fresh OpenSSH client process
  running the same agent probe command (`ssh ... python agent.py probe ROOT`).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from sheetrunner.config import DaemonConfig, HostConfig, SshConfig  # noqa: E402
from sheetrunner.daemon import transport_for  # noqa: E402
from sheetrunner.pool.hosts import HostAgent, Pool  # noqa: E402

SIZES = (4, 16, 32)
WARM_CYCLES = 3
NAIVE_CYCLES = 3
GPUS = 2
NS = "benchns000001"  # the sheet's namespace the probes look under


class Counted:
    """Counts the SSH execs (`run`) and uploads (`put_file`) of one transport."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.runs = 0
        self.puts = 0
        real_run, real_put = transport.run, transport.put_file

        def run(*args, **kwargs):
            self.runs += 1
            return real_run(*args, **kwargs)

        def put_file(*args, **kwargs):
            self.puts += 1
            return real_put(*args, **kwargs)

        transport.run, transport.put_file = run, put_file


def host_cpu_s(hosts: list) -> float:
    """CPU seconds used so far by the hosts' sshd trees (sessions, agents, nvidia-smi).

    Live processes count their own time, dead ones are in their parent's cutime/cstime.
    """
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            stats[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree = {h.proc.pid for h in hosts if h.running}
    grew = True
    while grew:
        grown = tree | {pid for pid, (ppid, _) in stats.items() if ppid in tree}
        grew, tree = grown != tree, grown
    return sum(stats[pid][1] for pid in tree if pid in stats) / os.sysconf("SC_CLK_TCK")


def host_config(host) -> HostConfig:  # host: tests/sshd.py FakeHost
    return HostConfig(name=host.name, address=host.address, port=host.port, user=host.user,
                      identity=str(host.lab.client_key), accelerators="auto",
                      root=str(host.root_dir), python=sys.executable)


def sheetrunner_cycles(lab, hosts: list) -> tuple[float, float, float, float, list[str]]:
    """(cold cycle s, median warm cycle s, execs per host per warm cycle,
    host CPU s per warm probe, agent paths)."""
    ssh = SshConfig(known_hosts=str(lab.known_hosts), connect_timeout_s=10, config_file=None)
    config = types.SimpleNamespace(ssh=ssh)  # transport_for reads only config.ssh
    probe_timeout = DaemonConfig().probe_timeout_s
    agents, counters = [], []
    for host in hosts:
        cfg = host_config(host)
        transport = transport_for(config, cfg)
        counters.append(Counted(transport))
        agents.append(HostAgent(cfg, transport, probe_timeout, namespace=NS))
    pool = Pool(agents, DaemonConfig().max_parallel_hosts)
    try:
        def cycle() -> float:
            start = time.perf_counter()
            seen = pool.probe_all({}, datetime.now(UTC))
            took = time.perf_counter() - start
            bad = [o for o in seen.values() if not o.reachable or len(o.accelerators) != GPUS]
            if bad:
                raise RuntimeError(f"probe failed: {bad[0]}")
            return took

        cold = cycle()  # connect + upload the agent + probe
        for c in counters:
            c.runs = c.puts = 0
        cpu = host_cpu_s(hosts)
        warm = statistics.median([cycle() for _ in range(WARM_CYCLES)])
        cpu = (host_cpu_s(hosts) - cpu) / (len(hosts) * WARM_CYCLES)
        execs = sum(c.runs for c in counters) / (len(hosts) * WARM_CYCLES)
        if any(c.puts for c in counters):
            raise RuntimeError("a warm cycle uploaded the agent again")
        return cold, warm, execs, cpu, [a._agent_path() for a in agents]
    finally:
        pool.close()


def naive_cycles(lab, hosts: list, agent_paths: list[str]) -> tuple[float, float]:
    """(median s of a cycle that starts one `ssh` client per host, one host after the
    other; host CPU s per probe)."""
    stdin = json.dumps({"attempts": []}).encode()  # what HostAgent.probe sends for no runs

    def probe(host, agent_path: str) -> None:
        remote = shlex.join([sys.executable, agent_path, "probe", f"{host.root_dir}/{NS}",
                             host.name])
        out = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(host.port), "-i", str(lab.client_key),
             "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10",
             f"{host.user}@{host.address}", remote],
            input=stdin, capture_output=True, timeout=60)
        if out.returncode != 0 or len(json.loads(out.stdout)["gpus"]) != GPUS:
            raise RuntimeError(f"ssh probe of {host.name} failed: {out.stderr.decode()[-300:]}")

    def cycle() -> float:
        start = time.perf_counter()
        for host, path in zip(hosts, agent_paths, strict=True):
            probe(host, path)
        return time.perf_counter() - start

    cpu = host_cpu_s(hosts)
    took = statistics.median([cycle() for _ in range(NAIVE_CYCLES)])
    time.sleep(0.2)  # let the listeners reap the last connection's sshd
    return took, (host_cpu_s(hosts) - cpu) / (len(hosts) * NAIVE_CYCLES)


def bench_pool() -> None:
    """One probe cycle over 4, 16 and 32 real sshd hosts against a fresh `ssh` per host."""
    from sshd import SshdLab  # tests/sshd.py (imports pytest): only this section needs it

    parallel = DaemonConfig().max_parallel_hosts
    print(f"pool: one probe cycle over N real sshd hosts ({GPUS} fake GPUs each), "
          f"max_parallel_hosts={parallel}; baseline: a fresh `ssh` client per host in sequence")
    load = os.getloadavg()[0]
    print(f"  {'hosts':>5} {'cold':>10} {'warm':>10} {'naive':>10} {'naive/warm':>11} "
          f"{'execs/host':>11}   host CPU per probe: warm / naive")
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp:
        lab = SshdLab(Path(tmp) / "lab")
        try:
            for i in range(max(SIZES)):
                lab.add_host(f"h{i:02d}", gpus=GPUS)
            hosts = list(lab.hosts.values())
            for n in SIZES:
                cold, warm, execs, cpu, paths = sheetrunner_cycles(lab, hosts[:n])
                naive, naive_cpu = naive_cycles(lab, hosts[:n], paths)
                print(f"  {n:>5} {cold * 1e3:7.0f} ms {warm * 1e3:7.0f} ms {naive * 1e3:7.0f} ms "
                      f"{naive / warm:10.1f}x {execs:11.2f}   {cpu * 1e3:4.0f} ms / "
                      f"{naive_cpu * 1e3:4.0f} ms", flush=True)
        finally:
            lab.close()
    print(f"  cold: first cycle (connect, upload the agent, probe); warm: median of "
          f"{WARM_CYCLES}; naive: median of {NAIVE_CYCLES}; {os.cpu_count()} CPUs, shared with "
          f"the fake hosts; load average {load:.1f} at the start")


if __name__ == "__main__":
    bench_pool()
