"""The agent's commands for code versions, setups and tidying a host's disk.

Shipped inside the agent's zipapp next to the protocol; standard library only, Python 3.6+
syntax. Every hash and relative path the daemon sends is checked here before a file is
touched (a manifest path is a plain relative path, never absolute, never `..`), and setup
commands are argv lists run without a shell, like jobs. Layout: sheetrunner/remote/protocol.py.

    code-need  NS_ROOT          {"version", "blobs"}: is the version here, which blobs are missing
    code-build NS_ROOT          {"version", "files": [[path, blob, mode]]}: build it atomically
    setup      NS_ROOT HOST     {"key", "commands", "env", "workdir", "retry"}: state, or start it
    setup-run  SETUP_DIR        (started detached by setup)
    gc         NS_ROOT HOST     {"runs", "checkpoints", "keep_code", "dry_run"}: remove, say bytes
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from sheetrunner.remote import protocol

REQUEST_BYTES = 64 << 20  # a manifest of a big tree
SETUP_TAIL_BYTES = 4096
DEFAULT_SETUP_TIMEOUT_S = 3600.0
SETUP_WAIT_S = 2.0  # the longest a setup call waits for the setup it started


class Refused(Exception):
    """A value not in the protocol's format: nothing was touched."""


def _request():
    data = sys.stdin.buffer.read(REQUEST_BYTES + 1)
    if len(data) > REQUEST_BYTES:
        raise Refused("request over %d bytes" % REQUEST_BYTES)
    try:
        found = json.loads(data.decode("utf-8") or "{}")
    except ValueError:
        raise Refused("request is not JSON") from None
    if not isinstance(found, dict):
        raise Refused("request is not an object")
    return found


def _ns_root(args, count):
    if len(args) != count:
        raise Refused("expected %d arguments" % count)
    ns_root = os.path.expanduser(args[0])
    if not protocol.is_namespace(os.path.basename(ns_root.rstrip("/"))):
        raise Refused("not a namespace root: %r" % args[0])
    if count > 1 and not protocol.is_host_name(args[1]):
        raise Refused("not a host name: %r" % args[1])
    return ns_root


def _hash(value, what):
    if not protocol.is_code_hash(value):
        raise Refused("not a %s hash: %r" % (what, value))
    return value


def _make_dirs(path):
    if not os.path.isdir(path):
        os.makedirs(path, protocol.DIR_MODE, exist_ok=True)


def _write_atomic(path, data, mode=protocol.FILE_MODE):
    tmp = "%s.tmp-%s" % (path, protocol.random_base36(8))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _relative(path):
    """A manifest path: relative, normalised, inside the version's directory."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/"):
        raise Refused("not a relative path: %r" % (path,))
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Refused("not a plain relative path: %r" % (path,))
    return path


# -- code versions ---------------------------------------------------------------------------


def code_need(args):
    ns_root = _ns_root(args, 1)
    request = _request()
    version = _hash(request.get("version"), "code")
    blobs = [_hash(b, "blob") for b in request.get("blobs") or []]
    objects = protocol.code_objects(ns_root)
    _make_dirs(objects)
    _make_dirs(protocol.code_manifests(ns_root))
    present = os.path.isdir(protocol.code_dir(ns_root, version))
    missing = (
        []
        if present
        else sorted({b for b in blobs if not os.path.isfile(os.path.join(objects, b))})
    )
    print(json.dumps({"present": present, "missing": missing}))


def code_build(args):
    """The version's tree, copied from the object store into a temporary directory and renamed
    into place: a version directory, once there, is complete. Copies, not links: a job that
    writes into its working directory never changes the store."""
    ns_root = _ns_root(args, 1)
    request = _request()
    version = _hash(request.get("version"), "code")
    files = request.get("files")
    if not isinstance(files, list):
        raise Refused("files is not a list")
    entries = []
    for item in files:
        if not isinstance(item, list) or len(item) != 3:
            raise Refused("a file entry is not [path, blob, mode]")
        entries.append((_relative(item[0]), _hash(item[1], "blob"), bool(item[2])))
    target = protocol.code_dir(ns_root, version)
    if os.path.isdir(target):
        print(json.dumps({"built": False, "dir": target}))
        return
    objects = protocol.code_objects(ns_root)
    missing = [b for _, b, _ in entries if not os.path.isfile(os.path.join(objects, b))]
    if missing:
        raise Refused("blobs missing: %s" % ", ".join(missing[:5]))
    tmp = "%s.tmp-%s" % (target, protocol.random_base36(8))
    os.mkdir(tmp, protocol.DIR_MODE)
    try:
        for path, blob, executable in entries:
            dest = os.path.join(tmp, path)
            _make_dirs(os.path.dirname(dest))
            shutil.copyfile(os.path.join(objects, blob), dest)
            os.chmod(dest, 0o700 if executable else protocol.FILE_MODE)
        manifest = json.dumps([[p, b, e] for p, b, e in entries]).encode()
        _write_atomic(os.path.join(protocol.code_manifests(ns_root), version + ".json"), manifest)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(target):  # another daemon's rename won: that is as good
            raise
    print(json.dumps({"built": True, "dir": target}))


# -- setups ----------------------------------------------------------------------------------


def setup(args):
    """A setup's state on this host; started (detached) when it never ran, or ran again when
    it failed and `retry` is set. Never waits for it: later calls observe it."""
    ns_root = _ns_root(args, 2)
    request = _request()
    key = _hash(request.get("key"), "setup")
    commands = request.get("commands")
    if not isinstance(commands, list) or not commands or not all(_argv(c) for c in commands):
        raise Refused("commands is not a list of argv lists")
    env = request.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and "\0" not in k and isinstance(v, str)
        for k, v in env.items()
    ):
        raise Refused("env is not an object of strings")
    workdir = request.get("workdir")
    if workdir is not None and (not isinstance(workdir, str) or "\0" in workdir):
        raise Refused("workdir is not a path")
    where = protocol.setup_dir(ns_root, args[1], key)
    state = setup_state(where)
    if state["state"] == "failed" and request.get("retry"):
        shutil.rmtree(where, ignore_errors=True)
        state = setup_state(where)
    if state["state"] != "absent":
        print(json.dumps(state))
        return
    _make_dirs(os.path.dirname(where))
    try:
        os.mkdir(where, protocol.DIR_MODE)
    except FileExistsError:  # another call started it a moment ago
        print(json.dumps(setup_state(where)))
        return
    spec = {
        "commands": commands,
        "env": env,
        "workdir": os.path.expanduser(workdir or "~"),
        "timeout_s": float(request.get("timeout_s") or DEFAULT_SETUP_TIMEOUT_S),
    }
    _write_atomic(os.path.join(where, "spec.json"), json.dumps(spec).encode())
    _detach(["setup-run", where])
    deadline = time.time() + SETUP_WAIT_S  # a quick setup is answered now, not next cycle
    state = setup_state(where)
    while state["state"] == "running" and time.time() < deadline:
        time.sleep(0.05)
        state = setup_state(where)
    print(json.dumps(state))


def _argv(item):
    return (
        isinstance(item, list)
        and bool(item)
        and all(isinstance(a, str) and "\0" not in a for a in item)
    )


def setup_state(where):
    """absent, running, succeeded or failed (with the log's tail), from the setup's files."""
    if not os.path.isdir(where):
        return {"state": "absent"}
    log = os.path.join(where, "output.log")
    code = _read_int(os.path.join(where, "exit_code"))
    if code is None:
        pid = _read_int(os.path.join(where, "pid"))
        started = _mtime(os.path.join(where, "spec.json"))
        if pid is not None and _alive(pid):
            return {"state": "running", "log": log}
        if pid is None and started is not None and time.time() - started < 30:
            return {"state": "running", "log": log}  # the runner has not written its pid yet
        return {
            "state": "failed",
            "exit_code": None,
            "log": log,
            "tail": "setup ended without an exit code (host rebooted or killed)",
        }
    state = "succeeded" if code == 0 else "failed"
    return {"state": state, "exit_code": code, "log": log, "tail": _tail(log)}


def setup_run(args):
    """Run a setup's commands one after the other in its working directory, their output in
    output.log, the first failure's exit code (or 0) in exit_code; a command past the time
    limit is killed with its process group and counts as failed (exit code 124)."""
    if len(args) != 1:
        raise Refused("expected SETUP_DIR")
    where = os.path.abspath(args[0])
    if not protocol.is_code_hash(os.path.basename(where)):
        raise Refused("not a setup directory: %r" % args[0])
    with open(os.path.join(where, "spec.json")) as f:
        spec = json.load(f)
    _write_atomic(os.path.join(where, "pid"), str(os.getpid()).encode())
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    deadline = time.time() + float(spec.get("timeout_s") or DEFAULT_SETUP_TIMEOUT_S)
    code = 0
    log_fd = os.open(
        os.path.join(where, "output.log"),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
        protocol.FILE_MODE,
    )
    try:
        for argv in spec["commands"]:
            os.write(log_fd, ("$ %s\n" % " ".join(argv)).encode())
            code = _run_one(argv, spec["workdir"], env, log_fd, deadline)
            if code != 0:
                break
    finally:
        os.close(log_fd)
    _write_atomic(os.path.join(where, "exit_code"), str(code).encode())


def _run_one(argv, workdir, env, log_fd, deadline):
    try:
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
        )
    except OSError as exc:
        os.write(log_fd, ("cannot start %s: %s\n" % (argv[0], exc)).encode())
        return 127
    try:
        return proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.write(log_fd, b"setup time limit reached: killed\n")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()
        return 124


def _detach(command):
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        subprocess.Popen(
            [sys.executable, os.path.abspath(sys.argv[0])] + command,
            stdin=devnull,
            stdout=devnull,
            stderr=devnull,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(devnull)


def _read_int(path):
    try:
        with open(path) as f:
            return int(f.read(64).strip())
    except (OSError, ValueError):
        return None


def _mtime(path):
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - SETUP_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


# -- tidying the disk ------------------------------------------------------------------------


def gc(args, unfinished_attempts):
    """Remove the attempt directories of the runs named (finished runs: the daemon chose them),
    the checkpoints named, and every code version not in `keep_code` that no unfinished
    attempt on this host uses, with the blobs only they used. Says what went and how many
    bytes; with `dry_run`, only says. A run with an unfinished attempt here is kept whatever
    the daemon asked."""
    ns_root = _ns_root(args, 2)
    host = args[1]
    request = _request()
    dry = bool(request.get("dry_run"))
    runs_root = protocol.runs_dir(ns_root, host)
    busy = {run_id for run_id, _ in unfinished_attempts(runs_root)}
    targets = []
    for run_id in request.get("runs") or []:
        if protocol.is_run_id(run_id) and run_id not in busy:
            targets.append(os.path.join(runs_root, run_id))
    for run_id in request.get("checkpoints") or []:
        if protocol.is_run_id(run_id) and run_id not in busy:
            targets.append(os.path.join(ns_root, "checkpoints", run_id))
    keep = {h for h in request.get("keep_code") or [] if protocol.is_code_hash(h)}
    keep |= _code_in_use(runs_root, busy)
    old_versions, old_blobs = _unused_code(ns_root, keep)
    targets += old_versions
    removed, freed = [], 0
    for path in targets + old_blobs:
        if not os.path.lexists(path):
            continue
        size = _size(path)
        if not dry:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        removed.append(path)
        freed += size
    if not dry:
        for version in old_versions:
            _unlink(
                os.path.join(protocol.code_manifests(ns_root), os.path.basename(version) + ".json")
            )
    print(json.dumps({"freed_bytes": freed, "removed": removed, "dry_run": dry}))


def _code_in_use(runs_root, busy):
    """Code versions the unfinished attempts of this host run in (from their spec.json)."""
    used = set()
    for run_id in busy:
        run_dir = os.path.join(runs_root, run_id)
        for attempt in os.listdir(run_dir) if os.path.isdir(run_dir) else ():
            try:
                with open(os.path.join(run_dir, attempt, "spec.json")) as f:
                    code = (json.load(f).get("code") or {}).get("hash")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(code, str) and protocol.is_code_hash(code):
                used.add(code)
    return used


def _unused_code(ns_root, keep):
    """Version directories not kept, and the blobs no kept version's manifest names."""
    root = protocol.code_root(ns_root)
    if not os.path.isdir(root):
        return [], []
    versions = [
        os.path.join(root, name)
        for name in sorted(os.listdir(root))
        if protocol.is_code_hash(name) and name not in keep
    ]
    wanted = set()
    for version in keep:
        try:
            with open(os.path.join(protocol.code_manifests(ns_root), version + ".json")) as f:
                wanted |= {entry[1] for entry in json.load(f)}
        except (OSError, ValueError, TypeError, IndexError):
            continue
    objects = protocol.code_objects(ns_root)
    names = sorted(os.listdir(objects)) if os.path.isdir(objects) else []
    blobs = [
        os.path.join(objects, name)
        for name in names
        if protocol.is_code_hash(name) and name not in wanted
    ]
    return versions, blobs


def _size(path):
    if os.path.islink(path) or not os.path.isdir(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
