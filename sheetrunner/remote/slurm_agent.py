"""The agent's Slurm commands, run on a cluster's login node (and `slurm-run` on its nodes).

Shipped inside the agent zipapp beside protocol.py; standard library only, Python 3.6+
syntax. Facts only, as the rest of the agent: Slurm's job states are reported as Slurm
says them, and the daemon maps them (sheetrunner/slurm_states.py). Every command is an
argv list, never a shell line; the one shell line Slurm needs (`--wrap`) is built here
from paths the protocol checked, each quoted.

  slurm-probe  NS_ROOT HOST          stdin: a probe request; the attempts' files and one
                                     squeue listing of this namespace's jobs
  slurm-submit NS_ROOT HOST          stdin: {"jobs": [{"spec", "sbatch"}...]}: claim each
                                     attempt directory, then sbatch it; one answer per job
  slurm-cancel NS_ROOT HOST RUN_ID ATTEMPT   scancel the attempt's job (by its name)
  slurm-hold   NS_ROOT HOST JOB_ID hold|release
  slurm-partition PARTITION          sinfo: the partition's nodes, their states and GPUs
  slurm-check  ROOT PARTITION [ACCOUNT]      for `doctor`: commands, partition, account, root
  slurm-run    ATTEMPT_DIR           the batch job itself: supervise the attempt
"""

import json
import os
import shutil
import subprocess
import sys
import time

from sheetrunner.remote import protocol

JOB_PREFIX = "sr."  # job names: sr.<namespace>.<run-id>.<attempt>
COMMANDS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
SLURM_TIMEOUT_S = 60
# Files of a previous start of the same attempt, moved aside when Slurm requeues the job
# (node failure, preemption) so the new start is judged on its own.
RESTART_FILES = ("exit_code", "pid", "supervisor", "stop", "lost", "leftovers")


def job_name(namespace, run_id, attempt):
    return "%s%s.%s.%d" % (JOB_PREFIX, namespace, run_id, int(attempt))


def parse_job_name(name, namespace):
    """(run_id, attempt) from one of this namespace's job names, else None."""
    parts = name.split(".")
    if len(parts) != 4 or parts[0] + "." != JOB_PREFIX or parts[1] != namespace:
        return None
    if not protocol.is_run_id(parts[2]) or not protocol.is_attempt(parts[3]):
        return None
    return parts[2], int(parts[3])


def main(command, args, agent):
    handlers = {
        "slurm-probe": probe,
        "slurm-submit": submit,
        "slurm-cancel": cancel,
        "slurm-hold": hold,
        "slurm-partition": partition,
        "slurm-check": check,
        "slurm-run": run,
    }
    if command not in handlers:
        sys.exit("unknown command %s" % command)
    handlers[command](args, agent)


def _slurm(argv, stdin=None):
    """(exit code, stdout, stderr) of one Slurm command; a missing command is exit 127."""
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=SLURM_TIMEOUT_S,
        )
    except FileNotFoundError:
        return 127, "", "%s: command not found" % argv[0]
    except subprocess.TimeoutExpired:
        return 124, "", "%s: no answer within %ds" % (argv[0], SLURM_TIMEOUT_S)
    return (
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace").strip(),
    )


def namespace_jobs(namespace):
    """This namespace's jobs Slurm still knows, by (run_id, attempt): one squeue call."""
    code, out, err = _slurm(["squeue", "--me", "-h", "-t", "all", "-o", "%i|%j|%T|%r|%M|%S"])
    if code != 0:
        raise RuntimeError("squeue failed: %s" % err[-300:])
    jobs = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != 6:
            continue
        found = parse_job_name(parts[1], namespace)
        if found is None:
            continue
        job = {"job_id": parts[0], "state": parts[2], "reason": parts[3], "elapsed": parts[4]}
        old = jobs.get(found)
        if old is None or int(job["job_id"]) > int(old["job_id"]):  # the newest submission
            jobs[found] = job
    return jobs


def probe(args, agent):
    ns_root, host = agent.where(args, 2)
    namespace = os.path.basename(ns_root.rstrip("/"))
    request = agent.read_request()
    try:
        jobs = namespace_jobs(namespace)
    except RuntimeError as exc:
        sys.stderr.write("%s\n" % exc)
        sys.exit(1)
    runs_root = protocol.runs_dir(ns_root, host)
    keys = (
        agent.wanted_attempts(request)
        | set(agent.unfinished_attempts(runs_root))
        | set(agent.newest_attempts(runs_root, agent.wanted_runs(request)))
        | set(jobs)
    )
    now = time.time()
    attempts = []
    for run_id, number in sorted(keys):
        paths = protocol.AttemptPaths(ns_root, host, run_id, number)
        seen, _ = agent.observe(paths, "", now, files_only=True)
        job = jobs.get((run_id, number))
        if job is not None:
            seen["slurm"] = job
        attempts.append(seen)
    agent.make_dirs(ns_root)
    answer = {"attempts": attempts, "hostname": os.uname()[1]}
    if request.get("partition"):  # the pool view's facts, in the same call
        answer["partition"] = partition_facts(str(request["partition"]))
    print(json.dumps(answer))


def submit(args, agent):
    """Each job: claim its attempt directory (mkdir is the lock: a directory already there
    means this attempt was submitted before, and it is not submitted again), write its spec,
    then sbatch. One call for all of a cycle's submissions to this cluster."""
    ns_root, host = agent.where(args, 2)
    request = agent.read_request()
    answers = []
    for item in request.get("jobs") or []:
        try:
            answers.append(_submit_one(ns_root, host, item, agent))
        except agent.Refused as exc:
            answers.append({"launched": False, "reason": "refused: %s" % exc})
    print(json.dumps(answers))


def _submit_one(ns_root, host, item, agent):
    spec, sbatch = item.get("spec") or {}, item.get("sbatch") or []
    if not isinstance(sbatch, list) or not all(agent.carriable(a) for a in sbatch):
        raise agent.Refused("sbatch is not a list of plain strings")
    paths = agent.attempt_paths(ns_root, host, spec.get("run_id"), spec.get("attempt"))
    answer = {"run_id": spec["run_id"], "attempt": int(spec["attempt"])}
    agent.check_spec(spec)
    spec["attempt"] = int(spec["attempt"])
    spec.update(agent.expanded_paths(spec, paths))
    agent.make_dirs(paths.run_dir)
    try:
        agent.make_dir(paths.dir)
    except FileExistsError:
        answer.update(launched=False, reason="attempt directory already exists", dir=paths.dir)
        return answer
    agent.write_atomic(paths.spec, json.dumps(spec, indent=2))
    agent.write_atomic(paths.token, protocol.random_base36(protocol.TOKEN_LENGTH))
    wrap = "exec %s %s slurm-run %s" % (
        _quote(sys.executable),
        _quote(os.path.abspath(sys.argv[0])),
        _quote(paths.dir),
    )
    argv = (
        ["sbatch", "--parsable"]
        + sbatch
        + [
            "--output=%s" % paths.file("slurm.out"),
            "--open-mode=append",
            "--chdir=%s" % paths.dir,
            "--wrap=%s" % wrap,
        ]
    )
    code, out, err = _slurm(argv)
    if code != 0:
        # nothing was queued: the attempt ends here, with sbatch's words in its log
        agent.write_atomic(paths.log, "sheetrunner: sbatch failed: %s\n" % err[-2000:])
        agent.write_atomic(paths.exit_code, "127")
        answer.update(launched=False, reason="sbatch failed: %s" % err[-300:])
        return answer
    job_id = out.strip().split(";")[0]
    agent.write_atomic(paths.file("slurm_job_id"), job_id)
    answer.update(launched=True, job_id=job_id, dir=paths.dir)
    return answer


def _quote(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def cancel(args, agent):
    ns_root, host = agent.where(args, 4)
    agent.check_attempt(args[2], args[3])
    name = job_name(os.path.basename(ns_root.rstrip("/")), args[2], args[3])
    code, _, err = _slurm(["scancel", "--me", "--name=%s" % name])
    if code != 0:
        sys.stderr.write("scancel failed: %s\n" % err[-300:])
        sys.exit(1)
    print(json.dumps({"state": "cancelled", "job_name": name}))


def hold(args, agent):
    if len(args) != 4 or not args[2].isdigit() or args[3] not in ("hold", "release"):
        raise agent.Refused("expected NS_ROOT HOST JOB_ID hold|release")
    code, _, err = _slurm(["scontrol", args[3], args[2]])
    if code != 0:
        sys.stderr.write("scontrol %s failed: %s\n" % (args[3], err[-300:]))
        sys.exit(1)
    print(json.dumps({"state": args[3]}))


def partition(args, agent):
    """Nodes of the partition with their state and GPUs (configured and in use)."""
    if len(args) != 1:
        raise agent.Refused("expected PARTITION")
    print(json.dumps(partition_facts(args[0])))


def partition_facts(name):
    code, out, err = _slurm(
        ["sinfo", "-h", "-N", "-p", name, "-O", "NodeList:|,StateLong:|,Gres:|,GresUsed:"]
    )
    if code != 0:
        return {"partition": name, "error": "sinfo failed: %s" % err[-300:], "nodes": []}
    nodes = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 4 and parts[0]:
            nodes.append(
                {"node": parts[0], "state": parts[1], "gres": parts[2], "gres_used": parts[3]}
            )
    return {"partition": name, "nodes": nodes}


def check(args, agent):
    """What `doctor` asks of a cluster: its commands, its partition, the account, the root."""
    if len(args) not in (2, 3):
        raise agent.Refused("expected ROOT PARTITION [ACCOUNT]")
    root, part = os.path.expanduser(args[0]), args[1]
    found = {"missing": [c for c in COMMANDS if shutil.which(c) is None]}
    code, out, err = _slurm(["sinfo", "-h", "-p", part, "-o", "%P"])
    found["partition"] = code == 0 and bool(out.strip())
    found["partition_error"] = err[-300:]
    if len(args) == 3:
        code, _, err = _slurm(
            ["sbatch", "--test-only", "-p", part, "--account=%s" % args[2], "--wrap=true"]
        )
        found["account"] = code == 0
        found["account_error"] = err[-300:]
    try:
        agent.make_dirs(root)
        probe_file = os.path.join(root, ".sheetrunner-write-check")
        agent.write_atomic(probe_file, "ok")
        os.unlink(probe_file)
        found["root"] = True
    except OSError as exc:
        found["root"] = False
        found["root_error"] = str(exc)
    print(json.dumps(found))


def run(args, agent):
    """The batch job: supervise the attempt as an SSH host's agent would, and end with the
    job's exit code, so Slurm's state (COMPLETED, FAILED) says what the job did. A requeued
    job (SLURM_RESTART_COUNT > 0) first moves the previous start's files aside."""
    paths = agent.supervised_paths(args)
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    if restarts.isdigit() and int(restarts) > 0:
        for name in RESTART_FILES:
            path = paths.file(name)
            if os.path.lexists(path):
                os.rename(path, "%s.%s" % (path, restarts))
    agent.supervise(args)
    _, code = agent.exit_code_of(paths, [])
    sys.exit(code if isinstance(code, int) and 0 <= code <= 255 else 1)
