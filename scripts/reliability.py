#!/usr/bin/env python3
"""Run the chaos scenarios (tests/chaos/) and write what they showed as docs/reliability.md.

    python3 scripts/reliability.py            # every chaos test -> docs/reliability.md
    python3 scripts/reliability.py --quick    # a short subset (under a minute) -> stdout
    python3 scripts/reliability.py --out FILE # write the table elsewhere

It runs pytest on tests/chaos in a subprocess with this file loaded as a
plugin (`-p reliability`), and edits none of the chaos tests. Per test, the
plugin records what the job-side guard reported whenever the test read it
(`guard_report` in tests/helpers.py, wrapped while the test runs: starts per
row tag and starts that found another copy of their row still running); the
JUnit XML gives outcome and wall time. Which column comes from where is
written under the table, so nobody reads more into it than was measured.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAOS = "tests/chaos"
# A short subset: the chaos tests that take a few seconds each and need no sshd.
QUICK = ("moved_rows or stale_copy or two_sheets or corpus_on_the_workbook or careless "
         "or cleared_header or crashed_job")
FACTS_ENV = "SHEETRUNNER_RELIABILITY_FACTS"

# -- the plugin, inside the pytest subprocess ---------------------------------------------------

try:
    import pytest
except ImportError:  # the report side needs no pytest
    pytest = None  # type: ignore[assignment]

_FACTS: dict[str, dict] = {}

if pytest is not None:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):  # noqa: ANN001 - a pytest hook
        seen: list[tuple[str, tuple]] = []
        patched = []

        def wrap(original):
            def guard_report(directory):
                result = original(directory)
                seen.append((str(directory), result))
                return result

            return guard_report

        modules = [item.module, sys.modules.get("tests.chaos.lab"), sys.modules.get("tests.helpers")]
        for module in {id(m): m for m in modules if m is not None}.values():
            original = getattr(module, "guard_report", None)
            if callable(original):
                module.guard_report = wrap(original)
                patched.append((module, original))
        try:
            yield
        finally:
            for module, original in patched:
                module.guard_report = original
            last = dict(seen)  # the final read of each guard directory
            _FACTS[item.nodeid] = {
                "guards": {d: {"starts": r[0], "concurrent": r[1]} for d, r in last.items()}
            }

    def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001 - a pytest hook
        path = os.environ.get(FACTS_ENV)
        if path:
            Path(path).write_text(json.dumps(_FACTS, indent=1))


# -- the report ---------------------------------------------------------------------------------


def run_chaos(quick: bool, workdir: Path) -> tuple[int, float, Path, Path, list[str]]:
    junit, facts = workdir / "junit.xml", workdir / "facts.json"
    argv = [sys.executable, "-m", "pytest", CHAOS, "-q", "-p", "no:cacheprovider",
            "-p", "reliability", f"--junitxml={junit}"]
    if quick:
        argv += ["-k", QUICK]
    env = dict(os.environ, **{FACTS_ENV: str(facts)})
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "scripts"), str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.monotonic() - started
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    return done.returncode, took, junit, facts, tail


def module_docs() -> dict[str, str]:
    """File name -> the first paragraph of its docstring: what the file's tests are about."""
    return {
        p.name: (ast.get_docstring(ast.parse(p.read_text())) or "").split("\n\n")[0]
        .replace("\n", " ")
        for p in sorted((ROOT / CHAOS).glob("test_*.py"))
    }


def test_sources() -> dict[tuple[str, str], tuple[str, str]]:
    """(file, test name) -> (what the test injects: its docstring's first sentence, or its
    name in words; its source), read from tests/chaos/*.py with ast."""
    found = {}
    for path in sorted((ROOT / CHAOS).glob("test_*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = (ast.get_docstring(node) or "").split("\n\n")[0].replace("\n", " ")
                words = node.name[len("test_"):].replace("_", " ")
                what = words + (f" — {doc}" if doc else "")
                found[(path.name, node.name)] = (what, ast.get_source_segment(text, node) or "")
    return found


def cases(junit: Path) -> list[dict]:
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        module = case.get("classname", "").rsplit(".", 1)[-1]
        out.append({"file": f"{module}.py", "name": case.get("name", ""),
                    "time": float(case.get("time") or 0), "outcome": outcome})
    return out


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], facts: dict, sources: dict) -> list[str]:
    lines = ["| scenario (fault injected) | outcome | rows started (job side) | "
             "duplicate starts (job side) | rows lost | escaped processes | "
             "fault → running again | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["name"].split("[")[0]
        what, source = sources.get((r["file"], base), (base.replace("_", " "), ""))
        if "[" in r["name"]:
            what += f" `[{r['name'].split('[', 1)[1]}`"
        nodeid = f"{CHAOS}/{r['file']}::{r['name']}"
        guards = (facts.get(nodeid) or {}).get("guards") or {}
        if guards:
            starts = sum(sum(g["starts"].values()) for g in guards.values())
            tags = sum(len(g["starts"]) for g in guards.values())
            concurrent = sum(len(g["concurrent"]) for g in guards.values())
            started = f"{tags} rows, {starts} starts"
            dup = str(concurrent) + (" (asserted 0)" if "concurrent" in source else "")
        else:
            started, dup = "not read by the test", "not checked by this test"
        if r["outcome"] != "passed":
            lost = "—"
        elif "all_final" in source or "statuses()" in source:
            lost = "0 (asserted: every row reached a final status)"
        else:
            lost = "not checked by this test"
        measured = (facts.get(nodeid) or {}).get("measured") or {}
        escaped = str(measured["escaped"]) if "escaped" in measured else "not checked"
        recovery = f"{measured['recovery_s']:.1f} s" if "recovery_s" in measured else "—"
        lines.append(f"| {cell(what)} | {r['outcome']} | {started} | {dup} | {lost} | "
                     f"{escaped} | {recovery} | {r['time']:.1f} s |")
    return lines


def render(rows: list[dict], facts: dict, command: str, took: float, quick: bool) -> str:
    sources = test_sources()
    by_file: dict[str, list[dict]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    out = [
        "# Reliability: the chaos scenarios and what they showed",
        "",
        f"Generated by `{command}` on {dt.date.today().isoformat()} "
        f"({'the quick subset' if quick else 'every chaos test'}: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        + f"; {took:.0f} s in all). Run it again to refresh this page; do not edit it by hand.",
        "",
        "Each scenario is one test of `tests/chaos/`: it injects one fault against real "
        "processes (the daemon, the workbook or the Sheets emulator, the agent, the fake job "
        "of `tests/jobs/fake_job.py`) and checks the outcome from the job's side. The "
        "README's promises (a row never started twice by accident, never silently lost) "
        "are what these tests assert.",
        "",
        "Where each column comes from:",
        "",
        "- **scenario**: the test's name and the first sentence of its docstring.",
        "- **outcome**: pytest's, from its JUnit XML.",
        "- **rows started, duplicate starts**: measured on the job's side. The fake job "
        "records every start under its row's tag and, through an flock per row, every start "
        "that found another copy of its row still running (`guard_report` in "
        "`tests/helpers.py`). The script records the last guard report each test read; "
        "\"not read by the test\" means the test has no such guard (it checks something "
        "else, e.g. which cells a write touched). *(asserted 0)* marks the tests that "
        "themselves assert no concurrent copy: for those, 0 is not an extra measurement "
        "but what the test already guarantees when it passes.",
        "- **rows lost**: not measured by this script. \"0 (asserted)\" means the test "
        "passed and waits for every row to reach a final status (`all_final`) or checks "
        "the statuses; otherwise the test does not check it.",
        "- **escaped processes**: processes of the scenario's attempts still running once "
        "its rows were final (found by their run directory in `/proc/*/environ`), as the "
        "recovery tests count them (`tests/chaos/test_recovery.py`, asserted 0).",
        "- **fault → running again**: measured by the recovery tests, from the fault (the "
        "crash's exit, the hung job's start, the host's death) to the row showing its next "
        "attempt running; it includes the configured backoff, `hang_timeout`, "
        "`host_lost_timeout` or `repair_after` of the test (0.5 s, 2 s, 2 s, 1 s).",
        "- **wall time**: the whole test (setup, the fault, the recovery and the checks).",
        "",
        "The failure paths of one run (crash, hang, kill that does not land, failed launch, "
        "host lost or rebooted, host clock skew, sheet unreadable) are tested on a fake "
        "clock in `tests/test_failure_paths.py` (milliseconds each, not listed here).",
        "",
    ]
    for name, items in sorted(by_file.items()):
        about = module_docs().get(name, "")
        out += [f"## {name}", "", *([about, ""] if about else []),
                *table(items, facts, sources), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"only a short subset (-k {QUICK!r}); prints unless --out")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: docs/reliability.md, or stdout with "
                             "--quick)")
    args = parser.parse_args(argv)
    out = args.out or (None if args.quick else ROOT / "docs" / "reliability.md")
    command = "python3 scripts/reliability.py" + (" --quick" if args.quick else "")
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        code, took, junit, facts_path, tail = run_chaos(args.quick, Path(tmp))
        if not junit.exists():
            print("pytest wrote no JUnit XML:", *tail, sep="\n", file=sys.stderr)
            return 1
        facts = json.loads(facts_path.read_text()) if facts_path.exists() else {}
        measured = Path(f"{facts_path}.measured")
        for line in measured.read_text().splitlines() if measured.exists() else []:
            fact = json.loads(line)
            facts.setdefault(fact.pop("test"), {})["measured"] = fact
        text = render(cases(junit), facts, command, took, args.quick)
    if out is None:
        print(text)
    else:
        out.write_text(text)
        print(f"wrote {out} ({took:.0f} s of chaos tests; pytest exit code {code})",
              file=sys.stderr)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
