#!/usr/bin/env python3
"""sheetrunner's agent on a host: probe, launch, supervise, kill, tail.

Uploaded by the daemon to <root>/bin/agent-<hash>.py and run with the host's
python3; standard library only, Python 3.6+ syntax. Every row value reaches
this script inside the JSON spec on stdin and reaches the job as argv items:
nothing here ever goes through a shell. Layout: docs/remote-layout.md.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

TAIL_BYTES = 65536
METRIC_PREFIX = "SHEETRUNNER "


def main(argv):
    command, args = argv[1], argv[2:]
    handlers = {"probe": probe, "launch": launch, "supervise": supervise, "kill": kill, "tail": tail,
                "history": history}
    if command not in handlers:
        sys.exit("usage: agent.py probe|launch|supervise|kill|tail ...")
    handlers[command](args)


# -- facts about this host ----------------------------------------------------------------------


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def start_ticks(pid):
    """The process's start time in clock ticks since boot: pid plus this is unique."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None  # a zombie has finished
    return fields[19]


def session_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
        return int(stat[stat.rindex(")") + 2:].split()[3])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid, ticks):
    if os.path.exists("/proc/self/stat"):
        return ticks is not None and start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def nvidia_gpus(our_sessions):
    """GPUs from nvidia-smi; a GPU used by a process outside our runs is foreign."""
    if shutil.which("nvidia-smi") is None:
        return [], ""
    try:
        gpus = _smi(["--query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu"])
        apps = _smi(["--query-compute-apps=gpu_uuid,pid,used_memory"])
    except (OSError, subprocess.SubprocessError) as exc:
        return [], "nvidia-smi failed: %s" % exc
    foreign = set()
    for app in apps:
        if len(app) >= 2 and app[1].isdigit() and session_of(int(app[1])) not in our_sessions:
            foreign.add(app[0])
    out = []
    for row in gpus:
        if len(row) < 6:
            continue
        out.append({
            "index": row[0], "uuid": row[1], "name": row[2],
            "memory_used_mib": _int(row[3]), "memory_total_mib": _int(row[4]),
            "utilization_pct": _int(row[5]), "foreign": row[1] in foreign,
        })
    return out, ""


def _smi(query):
    text = subprocess.run(
        ["nvidia-smi"] + query + ["--format=csv,noheader,nounits"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=15, check=True,
        universal_newlines=True,
    ).stdout
    return [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]


def _int(text):
    try:
        return int(float(text))
    except ValueError:
        return None


def tpu_chips():
    try:
        return sorted(d for d in os.listdir("/dev") if d.startswith("accel"))
    except OSError:
        return []


# -- one attempt directory -------------------------------------------------------------------


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def attempt_state(path, boot):
    """(state, exit_code, job session) of an attempt directory; see model.AttemptState."""
    if not os.path.isdir(path):
        return "missing", None, None
    code = read_text(os.path.join(path, "exit_code"))
    if code is not None:
        return "exited", _int(code.split()[0]) if code else None, None
    pid_line = read_text(os.path.join(path, "pid"))
    if not pid_line:
        young = time.time() - os.path.getmtime(path) < 60
        return ("starting" if young else "lost"), None, None
    parts = pid_line.split()
    pid, ticks, job_boot = int(parts[0]), parts[1], parts[2]
    sup_pid, sup_ticks = (int(parts[3]), parts[4]) if len(parts) >= 5 else (None, None)
    if job_boot != boot:
        return _lost(path)
    if alive(pid, ticks) or (sup_pid and alive(sup_pid, sup_ticks)):
        return "running", None, pid
    code = read_text(os.path.join(path, "exit_code"))  # it may have ended just now
    if code is not None:
        return "exited", _int(code.split()[0]), None
    return _lost(path)


def _lost(path):
    """Gone for good (host rebooted, or killed with its supervisor): mark it, so the scan
    for unfinished attempts skips it from now on."""
    try:
        open(os.path.join(path, "lost"), "a").close()
    except OSError:
        pass
    return "lost", None, None


def heartbeat_at(path):
    times = []
    for name in ("heartbeat", "output.log", "metrics.jsonl"):
        try:
            times.append(os.path.getmtime(os.path.join(path, name)))
        except OSError:
            pass
    return max(times) if times else None


def tail_bytes(path, size=TAIL_BYTES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


def latest_metrics(path):
    """The newest value of every metric reported lately (a loss every step, an accuracy
    every epoch: both show), from metrics.jsonl, else `SHEETRUNNER {...}` log lines."""
    for name, prefix in (("metrics.jsonl", ""), ("output.log", METRIC_PREFIX)):
        lines = tail_bytes(os.path.join(path, name)).decode("utf-8", "replace").splitlines()
        merged = {}
        for line in lines:
            found = _metric_line(line, prefix)
            if found is not None:
                merged.update(found)
        if merged:
            return merged
    return {}


def _metric_line(line, prefix):
    if not line.startswith(prefix):
        return None
    try:
        value = json.loads(line[len(prefix):])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def observe(root, run_id, attempt, boot):
    path = os.path.join(root, "runs", run_id, str(attempt))
    state, code, session = attempt_state(path, boot)
    seen = {"run_id": run_id, "attempt": attempt, "state": state, "exit_code": code,
            "log_path": os.path.join(path, "output.log")}
    if state != "missing":
        seen["heartbeat_at"] = heartbeat_at(path)
        seen["metrics"] = latest_metrics(path)
        seen["summary"] = metrics_summary(path)
    if state == "lost" or (state == "exited" and code != 0):
        seen["log_tail"] = last_lines(os.path.join(path, "output.log"))
    return seen, session


def last_lines(path, count=3, width=200):
    """The end of a failed job's log, for the row's message: usually the error itself."""
    text = tail_bytes(path, 4096).decode("utf-8", "replace")
    lines = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])


HISTORY_POINTS = 64


def metrics_summary(path):
    """Lowest, highest and a thinned history of every numeric metric of the attempt.

    Kept incrementally in metrics.summary.json (the byte offset read so far), so
    a long run's metrics file is read once, not once a cycle."""
    source, prefix = os.path.join(path, "metrics.jsonl"), ""
    if not os.path.exists(source):
        source, prefix = os.path.join(path, "output.log"), METRIC_PREFIX
    store = os.path.join(path, "metrics.summary.json")
    try:
        with open(store) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    if summary.get("source") != source:
        summary = {"source": source, "offset": 0, "min": {}, "max": {}, "history": {},
                   "stride": {}, "seen": {}}
    try:
        with open(source, "rb") as f:
            f.seek(summary["offset"])
            chunk = f.read()
    except OSError:
        chunk = b""
    end = chunk.rfind(b"\n") + 1  # whole lines only; a half-written one waits
    if end:
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            found = _metric_line(line, prefix)
            if found:
                _add_to_summary(summary, found)
        summary["offset"] += end
        try:
            write_atomic(store, json.dumps(summary))
        except OSError:
            pass
    return {k: summary[k] for k in ("min", "max", "history")}


def _add_to_summary(summary, metrics):
    for name, value in metrics.items():
        if name in ("time",) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN: no order, no point
            continue
        summary["min"][name] = min(value, summary["min"].get(name, value))
        summary["max"][name] = max(value, summary["max"].get(name, value))
        seen = summary["seen"].get(name, 0)
        stride = summary["stride"].get(name, 1)
        if seen % stride == 0:
            points = summary["history"].setdefault(name, [])
            points.append(value)
            if len(points) >= 2 * HISTORY_POINTS:  # thin out: every other point, double stride
                summary["history"][name] = points[::2]
                summary["stride"][name] = stride * 2
        summary["seen"][name] = seen + 1


def unfinished_attempts(root):
    """Every attempt directory without an exit code: candidates for fencing."""
    runs = os.path.join(root, "runs")
    try:
        run_ids = os.listdir(runs)
    except OSError:
        return []
    found = []
    for run_id in run_ids:
        try:
            names = os.listdir(os.path.join(runs, run_id))
        except OSError:
            continue
        for name in names:
            attempt = os.path.join(runs, run_id, name)
            ended = any(os.path.exists(os.path.join(attempt, f)) for f in ("exit_code", "lost"))
            if name.isdigit() and not ended:
                found.append((run_id, int(name)))
    return found


# -- commands -----------------------------------------------------------------------------------


def probe(args):
    """One JSON document: host facts and the state of the attempts asked for on stdin."""
    root = os.path.expanduser(args[0])
    wanted = json.loads(sys.stdin.read() or "{}").get("attempts", [])
    boot = boot_id()
    keys = {(r, int(a)) for r, a in wanted} | set(unfinished_attempts(root))
    attempts, sessions = [], set()
    for run_id, attempt in sorted(keys):
        seen, session = observe(root, run_id, attempt, boot)
        attempts.append(seen)
        if session:
            sessions.add(session)
    gpus, gpu_error = nvidia_gpus(sessions)
    os.makedirs(root, exist_ok=True)
    disk = shutil.disk_usage(root)
    print(json.dumps({
        "boot_id": boot, "hostname": os.uname()[1], "load": os.getloadavg()[0],
        "disk_free_bytes": disk.free, "gpus": gpus, "gpu_error": gpu_error,
        "tpu_chips": tpu_chips(), "attempts": attempts,
    }))


def launch(args):
    """Claim the attempt directory (mkdir is the lock), then start the supervisor detached."""
    root = os.path.expanduser(args[0])
    spec = json.loads(sys.stdin.read())
    run_dir = os.path.join(root, "runs", spec["run_id"])
    path = os.path.join(run_dir, str(spec["attempt"]))
    os.makedirs(run_dir, exist_ok=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        print(json.dumps({"launched": False, "reason": "attempt directory already exists",
                          "dir": path}))
        return
    spec.setdefault("checkpoint_dir", os.path.join(run_dir, "checkpoints"))
    write_atomic(os.path.join(path, "spec.json"), json.dumps(spec, indent=2))
    devnull = os.open(os.devnull, os.O_RDWR)
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "supervise", path],
        stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True, close_fds=True,
    )
    print(json.dumps({"launched": True, "dir": path}))


def job_env(spec, path):
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    accelerators = ",".join(spec.get("accelerators", []))
    env.update({
        "SHEETRUNNER_RUN_ID": spec["run_id"],
        "SHEETRUNNER_ATTEMPT": str(spec["attempt"]),
        "SHEETRUNNER_RUN_DIR": path,
        "SHEETRUNNER_CHECKPOINT_DIR": spec["checkpoint_dir"],
        "SHEETRUNNER_METRICS_FILE": os.path.join(path, "metrics.jsonl"),
        "SHEETRUNNER_HEARTBEAT_FILE": os.path.join(path, "heartbeat"),
        "SHEETRUNNER_ACCELERATORS": accelerators,
        "PYTHONUNBUFFERED": "1",
    })
    lib = spec.get("lib_dir")
    if lib and os.path.isdir(lib):  # sheetrunner.job, uploaded for hosts without sheetrunner
        env["PYTHONPATH"] = os.pathsep.join(p for p in (lib, env.get("PYTHONPATH")) if p)
    return env


def supervise(args):
    """Run the job in its own session, record its pid, write its exit code when it ends."""
    path = args[0]
    with open(os.path.join(path, "spec.json")) as f:
        spec = json.load(f)
    stop = os.path.join(path, "stop")
    if os.path.exists(stop):  # stopped before it started: never start it
        write_atomic(os.path.join(path, "exit_code"), str(128 + signal.SIGTERM))
        return
    os.makedirs(spec["checkpoint_dir"], exist_ok=True)
    workdir = os.path.expanduser(spec.get("workdir") or "~")
    log = open(os.path.join(path, "output.log"), "ab")
    try:
        job = subprocess.Popen(
            spec["argv"], cwd=workdir, env=job_env(spec, path), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        log.write(("sheetrunner: could not start %r: %s\n" % (spec["argv"], exc)).encode())
        log.close()
        write_atomic(os.path.join(path, "exit_code"), "127")
        return
    me = os.getpid()
    write_atomic(os.path.join(path, "pid"), "%d %s %s %d %s" % (
        job.pid, start_ticks(job.pid), boot_id(), me, start_ticks(me)))
    signal.signal(signal.SIGTERM, lambda *_: _signal_group(job.pid, signal.SIGTERM))
    if os.path.exists(stop):  # a kill that came while the job was starting found no pid yet
        _signal_group(job.pid, signal.SIGTERM)
    code = job.wait()
    write_atomic(os.path.join(path, "exit_code"), str(128 - code if code < 0 else code))


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def kill(args):
    """Stop an attempt: SIGTERM to its process group, SIGKILL after a grace period."""
    root, run_id, attempt = os.path.expanduser(args[0]), args[1], args[2]
    grace_s = float(args[3]) if len(args) > 3 else 10.0
    path = os.path.join(root, "runs", run_id, attempt)
    if not os.path.isdir(path):
        print(json.dumps({"killed": False, "state": "missing"}))
        return
    write_atomic(os.path.join(path, "stop"), str(time.time()))
    state, _, pid = attempt_state(path, boot_id())
    if state != "running" or pid is None:
        print(json.dumps({"killed": False, "state": state}))
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and attempt_state(path, boot_id())[0] == "running":
        time.sleep(0.1)
    if attempt_state(path, boot_id())[0] == "running":
        _signal_group(pid, signal.SIGKILL)
    print(json.dumps({"killed": True, "state": attempt_state(path, boot_id())[0]}))


def tail(args):
    """The last N bytes of a log, or with "+N" the bytes from offset N on (at most 1 MiB)."""
    root, run_id, attempt, size = os.path.expanduser(args[0]), args[1], args[2], args[3]
    path = os.path.join(root, "runs", run_id, attempt, "output.log")
    if not size.startswith("+"):
        sys.stdout.buffer.write(tail_bytes(path, int(size)))
        return
    try:
        with open(path, "rb") as f:
            f.seek(int(size[1:]))
            sys.stdout.buffer.write(f.read(1 << 20))
    except OSError:
        pass


def history(args):
    """Every report of an attempt (thinned evenly to at most N), as one JSON list: for plots."""
    root, run_id, attempt, most = os.path.expanduser(args[0]), args[1], args[2], int(args[3])
    path = os.path.join(root, "runs", run_id, attempt)
    records = []
    for name, prefix in (("metrics.jsonl", ""), ("output.log", METRIC_PREFIX)):
        try:
            with open(os.path.join(path, name), encoding="utf-8", errors="replace") as f:
                records = [r for r in (_metric_line(line, prefix) for line in f) if r]
        except OSError:
            continue
        if records:
            break
    if len(records) > most > 0:
        records = [records[i * len(records) // most] for i in range(most)]
    print(json.dumps(records))


def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv)
