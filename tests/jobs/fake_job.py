"""A stand-in job for daemon tests: no torch, seconds long, behaviour chosen by argv.

It reports with the plain log-line format (no sheetrunner import), so it also
proves that a job ignoring the library is watched correctly.
"""

import argparse
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
parser.add_argument("--echo", default=None, help="print this argv item back as JSON")
args, unknown = parser.parse_known_args()

if args.echo is not None:
    print("ECHO " + json.dumps({"echo": args.echo, "argv": sys.argv[1:]}), flush=True)
attempt = int(os.environ.get("SHEETRUNNER_ATTEMPT", "1"))
if args.hang:
    time.sleep(3600)
for step in range(1, args.steps + 1):
    time.sleep(args.sleep)
    print("SHEETRUNNER " + json.dumps({"step": step, "loss": 1.0 / step}), flush=True)
if attempt <= args.fail_attempts:
    sys.exit(3)
if args.exit:
    print(f"RuntimeError: failing on purpose with {args.exit} (attempt {attempt})", flush=True)
sys.exit(args.exit)
