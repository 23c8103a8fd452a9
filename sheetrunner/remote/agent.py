#!/usr/bin/env python3
"""sheetrunner's agent on a host: probe, launch, supervise, kill, tail, history.

Shipped as a zipapp, <root>/bin/agent-<hash>.pyz (this file is its __main__.py,
next to sheetrunner/remote/protocol.py), and run as `python3 agent.pyz COMMAND`;
standard library only, Python 3.6+ syntax. Every row value reaches this script
inside the JSON on stdin and reaches the job as argv items: nothing here ever
goes through a shell. A run id, attempt number, namespace or host name that is
not in the protocol's format is refused (exit 3) before any file is touched,
so no value can name a path outside the host's directory. Paths may start
with `~`: they are expanded here, on the host. Layout: docs/remote-layout.md.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from sheetrunner.remote import protocol
from sheetrunner.remote.protocol import AttemptPaths

TAIL_BYTES = 65536
METRIC_PREFIX = "SHEETRUNNER "
REFUSED_EXIT = 3
USAGE = """usage: agent.pyz COMMAND ...
  probe    NS_ROOT HOST                      request on stdin
  facts    ROOT                              the host alone, no runs
  launch   NS_ROOT HOST                      spec on stdin
  kill     NS_ROOT HOST RUN_ID ATTEMPT [GRACE_S]
  tail     NS_ROOT HOST RUN_ID ATTEMPT SIZE|+OFFSET
  history  NS_ROOT HOST RUN_ID ATTEMPT MOST
  supervise ATTEMPT_DIR                      (started by launch)"""


class Refused(Exception):
    """A value that is not in the protocol's format: nothing was touched."""


def main(argv):
    handlers = {"probe": probe, "facts": facts, "launch": launch, "supervise": supervise,
                "kill": kill, "tail": tail, "history": history}
    if len(argv) < 2 or argv[1] not in handlers:
        sys.exit(USAGE)
    try:
        handlers[argv[1]](argv[2:])
    except Refused as exc:
        sys.stderr.write("refused: %s\n" % exc)
        sys.exit(REFUSED_EXIT)


# -- checking what the daemon sent ----------------------------------------------------------


def where(args, count):
    """(namespace root, host name) from the first arguments, checked; `count` arguments
    are needed in all."""
    if len(args) < count:
        raise Refused("expected %d arguments, got %d" % (count, len(args)))
    ns_root, host = os.path.expanduser(args[0]), args[1]
    if not protocol.is_namespace(os.path.basename(ns_root.rstrip("/"))):
        raise Refused("not a namespace root: %r" % args[0])
    if not protocol.is_host_name(host):
        raise Refused("not a host name: %r" % host)
    return ns_root, host


def check_attempt(run_id, attempt):
    if not protocol.is_run_id(run_id):
        raise Refused("not a run id: %r" % (run_id,))
    if not protocol.is_attempt(attempt):
        raise Refused("not an attempt number: %r" % (attempt,))


def attempt_paths(ns_root, host, run_id, attempt):
    """The attempt's paths, once run id and attempt number are known to be well formed."""
    check_attempt(run_id, attempt)
    return AttemptPaths(ns_root, host, run_id, attempt)


def read_request():
    """The JSON object on stdin (empty stdin: an empty object)."""
    text = sys.stdin.read()
    try:
        request = json.loads(text) if text.strip() else {}
    except ValueError:
        raise Refused("stdin is not JSON") from None
    if not isinstance(request, dict):
        raise Refused("stdin is not a JSON object")
    return request


def wanted_attempts(request):
    """The (run id, attempt) pairs of a probe request, each checked."""
    pairs = request.get("attempts", [])
    if not isinstance(pairs, list):
        raise Refused("attempts is not a list")
    found = set()
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise Refused("not a [run_id, attempt] pair: %r" % (pair,))
        check_attempt(pair[0], pair[1])
        found.add((pair[0], int(pair[1])))
    return found


def wanted_runs(request):
    ids = request.get("runs", [])
    if not isinstance(ids, list):
        raise Refused("runs is not a list")
    for run_id in ids:
        if not protocol.is_run_id(run_id):
            raise Refused("not a run id: %r" % (run_id,))
    return set(ids)


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
    except (ValueError, OverflowError):
        return None


def tpu_chips():
    try:
        return sorted(d for d in os.listdir("/dev") if d.startswith("accel"))
    except OSError:
        return []


# -- one attempt directory -------------------------------------------------------------------


def read_text(path):
    """A small file's text, or None when it is absent or unreadable (a job may write junk)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096).strip()
    except (OSError, ValueError):
        return None


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _whole(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def exit_code_of(paths):
    """(written, code): the supervisor's exit code; a file holding junk counts as written."""
    text = read_text(paths.exit_code)
    if text is None:
        return False, None
    return True, _whole(text.split()[0]) if text else None


def pid_record(paths):
    """(job pid, its start ticks, boot id, supervisor pid, its start ticks) from the pid
    file, or None when it is absent or not in that form."""
    parts = (read_text(paths.pid) or "").split()
    pid = _whole(parts[0]) if parts else None
    if len(parts) < 3 or pid is None or pid <= 1:
        return None
    sup = _whole(parts[3]) if len(parts) >= 5 else None
    if sup is not None and sup <= 1:
        sup = None
    return pid, parts[1], parts[2], sup, parts[4] if sup else None


def attempt_state(paths, boot):
    """(state, exit_code, job session) of an attempt directory; see model.AttemptState."""
    if not os.path.isdir(paths.dir):
        return "missing", None, None
    written, code = exit_code_of(paths)
    if written:
        return "exited", code, None
    record = pid_record(paths)
    if record is None:
        young = time.time() - _mtime(paths.dir, 0) < 60
        return ("starting" if young else "lost"), None, None
    pid, ticks, job_boot, sup_pid, sup_ticks = record
    if job_boot != boot:
        return _lost(paths)
    if alive(pid, ticks) or (sup_pid and alive(sup_pid, sup_ticks)):
        return "running", None, pid
    written, code = exit_code_of(paths)  # it may have ended just now
    if written:
        return "exited", code, None
    return _lost(paths)


def _lost(paths):
    """Gone for good (host rebooted, or killed with its supervisor): mark it, so the scan
    for unfinished attempts skips it from now on."""
    try:
        open(paths.lost, "a").close()
    except OSError:
        pass
    return "lost", None, None


def _mtime(path, default=None):
    try:
        return os.path.getmtime(path)
    except OSError:
        return default


def heartbeat_at(paths):
    """The newest sign of progress, on this host's clock: the job's heartbeat or output."""
    times = [t for t in (_mtime(p) for p in (paths.heartbeat, paths.log, paths.metrics))
             if t is not None]
    return max(times) if times else None


def started_at(paths):
    """When the attempt was claimed: spec.json is written right after the mkdir and never
    again (the directory's own mtime moves with every file created in it)."""
    return _mtime(paths.spec, _mtime(paths.dir))


def age(then, now):
    """Seconds since `then`, both on this host's clock; what the daemon gets instead of
    a time, so a skewed clock here cannot make a healthy run look hung."""
    return None if then is None else max(0.0, now - then)


def spec_facts(paths):
    """What the daemon needs to rebuild the run from spec.json; empty values when the
    spec is missing or damaged."""
    spec = read_json(paths.spec)
    spec = spec if isinstance(spec, dict) else {}
    params = spec.get("params")
    accelerators = spec.get("accelerators")
    gpus = spec.get("gpus")
    return {
        "key": _str(spec.get("key")),
        "job": _str(spec.get("job")),
        "params": [[_str(p[0]), _str(p[1])] for p in (params if isinstance(params, list) else [])
                   if isinstance(p, list) and len(p) == 2],
        "gpus": gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 0,
        "accelerators": [_str(a) for a in (accelerators if isinstance(accelerators, list) else [])],
    }


def _str(value):
    return value if isinstance(value, str) else ("" if value is None else str(value))


def tail_bytes(path, size=TAIL_BYTES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read()
    except OSError:
        return b""


def latest_metrics(paths):
    """The newest value of every metric reported lately (a loss every step, an accuracy
    every epoch: both show), from metrics.jsonl, else `SHEETRUNNER {...}` log lines."""
    for source, prefix in ((paths.metrics, ""), (paths.log, METRIC_PREFIX)):
        lines = tail_bytes(source).decode("utf-8", "replace").splitlines()
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


def observe(paths, boot, now):
    """One attempt as the probe reports it; ages are measured here, on the host."""
    state, code, session = attempt_state(paths, boot)
    seen = {"run_id": os.path.basename(paths.run_dir), "attempt": int(os.path.basename(paths.dir)),
            "state": state, "exit_code": code, "log_path": paths.log,
            "spec": spec_facts(paths), "heartbeat_age_s": None, "started_age_s": None}
    if state != "missing":
        seen["heartbeat_age_s"] = age(heartbeat_at(paths), now)
        seen["started_age_s"] = age(started_at(paths), now)
        seen["metrics"] = latest_metrics(paths)
        seen["summary"] = metrics_summary(paths)
    if state == "lost" or (state == "exited" and code != 0):
        seen["log_tail"] = last_lines(paths.log)
    return seen, session


def last_lines(path, count=3, width=200):
    """The end of a failed job's log, for the row's message: usually the error itself."""
    text = tail_bytes(path, 4096).decode("utf-8", "replace")
    lines = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])


HISTORY_POINTS = 64
SUMMARY_KEYS = ("min", "max", "history", "stride", "seen")


def metrics_summary(paths):
    """Lowest, highest and a thinned history of every numeric metric of the attempt.

    Kept incrementally in metrics.summary.json (the byte offset read so far), so
    a long run's metrics file is read once, not once a cycle."""
    source, prefix = paths.metrics, ""
    if not os.path.exists(source):
        source, prefix = paths.log, METRIC_PREFIX
    summary = _stored_summary(paths.summary, source)
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
            write_atomic(paths.summary, json.dumps(summary))
        except OSError:
            pass
    return {k: summary[k] for k in ("min", "max", "history")}


def _stored_summary(store, source):
    """The summary kept so far, or a fresh one when it is missing, for another source or
    not in the shape this agent writes (a job may have written anything there)."""
    summary = read_json(store)
    fresh = {"source": source, "offset": 0, "min": {}, "max": {}, "history": {},
             "stride": {}, "seen": {}}
    if not isinstance(summary, dict) or summary.get("source") != source:
        return fresh
    offset = summary.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return fresh
    if not all(isinstance(summary.get(k), dict) for k in SUMMARY_KEYS):
        return fresh
    return summary


def _add_to_summary(summary, metrics):
    for name, value in metrics.items():
        if name in ("time",) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN: no order, no point
            continue
        try:
            _add_point(summary, name, value)
        except (TypeError, ValueError, AttributeError):
            _forget(summary, name)
            _add_point(summary, name, value)


def _add_point(summary, name, value):
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


def _forget(summary, name):
    """Drop one metric's damaged record, so it starts again from this point."""
    for key in SUMMARY_KEYS:
        summary[key].pop(name, None)


def _attempt_numbers(run_dir):
    """The attempt directories of a run, by number: names in canonical form only."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(int(n) for n in names if protocol.is_attempt(n) and n == str(int(n)))


def _run_ids(runs_root):
    try:
        return [n for n in os.listdir(runs_root) if protocol.is_run_id(n)]
    except OSError:
        return []


def unfinished_attempts(runs_root):
    """Every attempt of this host without an exit code: candidates for fencing."""
    found = []
    for run_id in _run_ids(runs_root):
        for number in _attempt_numbers(os.path.join(runs_root, run_id)):
            attempt = os.path.join(runs_root, run_id, str(number))
            ended = any(os.path.exists(os.path.join(attempt, f)) for f in ("exit_code", "lost"))
            if not ended:
                found.append((run_id, number))
    return found


def newest_attempts(runs_root, run_ids):
    """The highest-numbered attempt of each run asked for that has a directory here."""
    found = []
    for run_id in run_ids:
        numbers = _attempt_numbers(os.path.join(runs_root, run_id))
        if numbers:
            found.append((run_id, numbers[-1]))
    return found


# -- commands -----------------------------------------------------------------------------------


def probe(args):
    """One JSON document: host facts, and the attempts asked for, the newest attempt of each
    run asked for, and every unfinished attempt of this host in the namespace."""
    ns_root, host = where(args, 2)
    request = read_request()
    wanted, run_ids = wanted_attempts(request), wanted_runs(request)
    runs_root = protocol.runs_dir(ns_root, host)
    boot, now = boot_id(), time.time()
    keys = wanted | set(unfinished_attempts(runs_root)) | set(newest_attempts(runs_root, run_ids))
    attempts, sessions = [], set()
    for run_id, attempt in sorted(keys):
        seen, session = observe(AttemptPaths(ns_root, host, run_id, attempt), boot, now)
        attempts.append(seen)
        if session:
            sessions.add(session)
    os.makedirs(ns_root, exist_ok=True)
    print(json.dumps(dict(host_facts(ns_root, boot, sessions), attempts=attempts)))


def facts(args):
    """The host's facts alone, before any namespace is known (`sheetrunner doctor`): every
    GPU process counts as foreign, since no run is looked at."""
    if len(args) != 1:
        raise Refused("expected ROOT")
    root = os.path.expanduser(args[0])
    os.makedirs(root, exist_ok=True)
    print(json.dumps(host_facts(root, boot_id(), set())))


def host_facts(where, boot, sessions):
    gpus, gpu_error = nvidia_gpus(sessions)
    return {
        "boot_id": boot, "hostname": os.uname()[1], "load": os.getloadavg()[0],
        "disk_free_bytes": shutil.disk_usage(where).free, "gpus": gpus, "gpu_error": gpu_error,
        "tpu_chips": tpu_chips(),
    }


def launch(args):
    """Claim the attempt directory (mkdir is the lock), then start the supervisor detached."""
    ns_root, host = where(args, 2)
    spec = read_request()
    paths = attempt_paths(ns_root, host, spec.get("run_id"), spec.get("attempt"))
    check_argv(spec.get("argv"))
    os.makedirs(paths.run_dir, exist_ok=True)
    try:
        os.mkdir(paths.dir)
    except FileExistsError:
        print(json.dumps({"launched": False, "reason": "attempt directory already exists",
                          "dir": paths.dir}))
        return
    spec["attempt"] = int(spec["attempt"])
    spec.update(expanded_paths(spec, paths))
    write_atomic(paths.spec, json.dumps(spec, indent=2))
    devnull = os.open(os.devnull, os.O_RDWR)
    subprocess.Popen(
        [sys.executable, os.path.abspath(sys.argv[0]), "supervise", paths.dir],
        stdin=devnull, stdout=devnull, stderr=devnull, start_new_session=True, close_fds=True,
    )
    print(json.dumps({"launched": True, "dir": paths.dir}))


def check_argv(argv):
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise Refused("argv is not a non-empty list of strings")


def expanded_paths(spec, paths):
    """The spec's paths with `~` expanded here, the checkpoint directory defaulted: the
    spec.json on disk says exactly where things went."""
    lib = spec.get("lib_dir")
    return {
        "checkpoint_dir": os.path.expanduser(spec.get("checkpoint_dir") or paths.checkpoints),
        "workdir": os.path.expanduser(spec.get("workdir") or "~"),
        "lib_dir": os.path.expanduser(lib) if isinstance(lib, str) and lib else None,
    }


def job_env(spec, paths):
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    env.update({
        protocol.ENV_RUN_ID: os.path.basename(paths.run_dir),
        protocol.ENV_ATTEMPT: os.path.basename(paths.dir),
        protocol.ENV_RUN_DIR: paths.dir,
        protocol.ENV_CHECKPOINT_DIR: spec["checkpoint_dir"],
        protocol.ENV_METRICS_FILE: paths.metrics,
        protocol.ENV_HEARTBEAT_FILE: paths.heartbeat,
        protocol.ENV_ACCELERATORS: ",".join(spec.get("accelerators", [])),
        "PYTHONUNBUFFERED": "1",
    })
    lib = spec.get("lib_dir")
    if lib and os.path.isdir(lib):  # sheetrunner.job, uploaded for hosts without sheetrunner
        env["PYTHONPATH"] = os.pathsep.join(p for p in (lib, env.get("PYTHONPATH")) if p)
    return env


def supervised_paths(args):
    """The attempt directory launch handed over, checked like any other attempt."""
    if len(args) != 1:
        raise Refused("expected ATTEMPT_DIR")
    path = os.path.abspath(args[0])
    run_dir = os.path.dirname(path)
    runs_root = os.path.dirname(run_dir)
    host_dir = os.path.dirname(runs_root)
    ns_root = os.path.dirname(os.path.dirname(host_dir))
    paths = attempt_paths(ns_root, os.path.basename(host_dir), os.path.basename(run_dir),
                          os.path.basename(path))
    if paths.dir != path:
        raise Refused("not an attempt directory: %r" % args[0])
    return paths


def supervise(args):
    """Run the job in its own session, record its pid, write its exit code when it ends."""
    paths = supervised_paths(args)
    with open(paths.spec) as f:
        spec = json.load(f)
    if os.path.exists(paths.stop):  # stopped before it started: never start it
        write_atomic(paths.exit_code, str(128 + signal.SIGTERM))
        return
    os.makedirs(spec["checkpoint_dir"], exist_ok=True)
    log = open(paths.log, "ab")
    try:
        job = subprocess.Popen(
            spec["argv"], cwd=spec["workdir"], env=job_env(spec, paths), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    except OSError as exc:
        log.write(("sheetrunner: could not start %r: %s\n" % (spec["argv"], exc)).encode())
        log.close()
        write_atomic(paths.exit_code, "127")
        return
    me = os.getpid()
    write_atomic(paths.pid, "%d %s %s %d %s" % (
        job.pid, start_ticks(job.pid), boot_id(), me, start_ticks(me)))
    signal.signal(signal.SIGTERM, lambda *_: _signal_group(job.pid, signal.SIGTERM))
    if os.path.exists(paths.stop):  # a kill that came while the job was starting found no pid yet
        _signal_group(job.pid, signal.SIGTERM)
    code = job.wait()
    write_atomic(paths.exit_code, str(128 - code if code < 0 else code))


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


def named_attempt(args, count):
    """The attempt named by NS_ROOT HOST RUN_ID ATTEMPT, checked; `count` arguments needed."""
    ns_root, host = where(args, count)
    return attempt_paths(ns_root, host, args[2], args[3])


def kill(args):
    """Stop an attempt: SIGTERM to its process group, SIGKILL after a grace period."""
    paths = named_attempt(args, 4)
    grace_s = _seconds(args[4]) if len(args) > 4 else 10.0
    if not os.path.isdir(paths.dir):
        print(json.dumps({"killed": False, "state": "missing"}))
        return
    write_atomic(paths.stop, str(time.time()))
    state, _, pid = attempt_state(paths, boot_id())
    if state != "running" or pid is None:
        print(json.dumps({"killed": False, "state": state}))
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline and attempt_state(paths, boot_id())[0] == "running":
        time.sleep(0.1)
    if attempt_state(paths, boot_id())[0] == "running":
        _signal_group(pid, signal.SIGKILL)
    print(json.dumps({"killed": True, "state": attempt_state(paths, boot_id())[0]}))


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise Refused("not a number of seconds: %r" % text) from None
    if not 0 <= value <= 3600:
        raise Refused("grace period out of range: %r" % text)
    return value


def tail(args):
    """The last N bytes of a log, or with "+N" the bytes from offset N on (at most 1 MiB)."""
    paths = named_attempt(args, 5)
    size = args[4]
    number = _whole(size[1:] if size.startswith("+") else size)
    if number is None or number < 0:
        raise Refused("not a size or +offset: %r" % size)
    if not size.startswith("+"):
        sys.stdout.buffer.write(tail_bytes(paths.log, number))
        return
    try:
        with open(paths.log, "rb") as f:
            f.seek(number)
            sys.stdout.buffer.write(f.read(1 << 20))
    except OSError:
        pass


def history(args):
    """Every report of an attempt (thinned evenly to at most N), as one JSON list: for plots."""
    paths = named_attempt(args, 5)
    most = _whole(args[4])
    if most is None:
        raise Refused("not a count: %r" % args[4])
    records = []
    for source, prefix in ((paths.metrics, ""), (paths.log, METRIC_PREFIX)):
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
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
