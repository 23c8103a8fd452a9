"""A stand-in job for daemon tests: no torch, seconds long, behaviour chosen by argv.

It reports with the plain log-line format (no sheetrunner import), so it also
proves that a job ignoring the library is watched correctly.
"""

import argparse
import fcntl
import json
import os
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--sleep", type=float, default=0.1)
parser.add_argument("--exit", type=int, default=0, help="exit code at the end")
parser.add_argument("--fail-attempts", type=int, default=0, help="attempts (1..N) that exit 3")
parser.add_argument("--hang", type=int, default=0, help="sleep forever silently (1 = yes)")
parser.add_argument("--hang-attempts", type=int, default=0, help="attempts (1..N) that hang")
parser.add_argument("--echo", default=None, help="print this argv item back as JSON")
parser.add_argument("--tag", default=None, help="the row's name for the guard (FAKE_GUARD_DIR)")
parser.add_argument("--wait-for", default=None, help="wait until this file exists (at most 120 s)")
args, unknown = parser.parse_known_args()


def guard(directory, tag):
    """The job-side check of the chaos tests: every start is recorded, and a start that
    finds another copy of its row still running (a held flock) is recorded as concurrent."""
    os.makedirs(directory, exist_ok=True)
    held = open(os.path.join(directory, tag + ".lock"), "a")
    run_id, attempt = os.environ.get("SHEETRUNNER_RUN_ID"), os.environ.get("SHEETRUNNER_ATTEMPT")
    line = f"{tag} {run_id} {attempt}\n"
    with open(os.path.join(directory, "starts.log"), "a") as f:
        f.write(line)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        with open(os.path.join(directory, "concurrent.log"), "a") as f:
            f.write(line)
    return held


if args.tag and os.environ.get("FAKE_GUARD_DIR"):
    _held = guard(os.environ["FAKE_GUARD_DIR"], args.tag)

if args.wait_for:
    waited_until = time.monotonic() + 120
    while not os.path.exists(args.wait_for) and time.monotonic() < waited_until:
        print("SHEETRUNNER " + json.dumps({"waiting": 1}), flush=True)  # a heartbeat
        time.sleep(0.2)

if args.echo is not None:
    print("ECHO " + json.dumps({"echo": args.echo, "argv": sys.argv[1:]}), flush=True)
attempt = int(os.environ.get("SHEETRUNNER_ATTEMPT", "1"))
if args.hang or attempt <= args.hang_attempts:
    time.sleep(3600)
for step in range(1, args.steps + 1):
    time.sleep(args.sleep)
    print("SHEETRUNNER " + json.dumps({"step": step, "loss": 1.0 / step}), flush=True)
if attempt <= args.fail_attempts:
    sys.exit(3)
if args.exit:
    print(f"RuntimeError: failing on purpose with {args.exit} (attempt {attempt})", flush=True)
sys.exit(args.exit)
