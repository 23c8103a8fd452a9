"""The plot of docs/performance.md from a `bench/run.py lab` run's JSON results.

    SHEETRUNNER_BENCH_JSON=/tmp/lab.json python bench/run.py lab
    python bench/plot_lab.py /tmp/lab.json docs/images/performance-lab.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(results: dict, out: Path) -> None:
    rows = results["probe"]
    hosts = [r["hosts"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(hosts, [r["naive_s"] for r in rows], "o-", label="fresh ssh per host, in sequence")
    ax.plot(hosts, [r["exec_s"] for r in rows], "s-", label="exec per probe (persistent connection)")
    ax.plot(hosts, [r["warm_s"] for r in rows], "^-", label="resident agent")
    sim = results.get("probe_sim")
    if sim:
        ax.plot([sim["hosts"]], [sim["warm_s"]], "^", color="C2", fillstyle="none", markersize=9,
                label=f"resident, simulated transport ({sim['rtt_ms']:.0f} ms round trip)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hosts")
    ax.set_ylabel("warm probe cycle (s)")
    load = results["meta"]["load"][0]
    ax.set_title(f"Probe cycle vs hosts (real sshd on {results['meta']['cpus']} shared cores, "
                 f"load {load:.1f})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)


if __name__ == "__main__":
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
