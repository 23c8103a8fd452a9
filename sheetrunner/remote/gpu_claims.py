"""GPU claims on a host: one flock per GPU, shared by every sheet and user of the host.

Part of the agent (shipped in its zipapp; standard library only, Python 3.6+ syntax).
docs/shared-gpus.md. A launch takes an exclusive flock on <claims dir>/<GPU UUID> for
each GPU it was given and hands the open files to the supervisor, which holds them until
it exits (the kernel drops them however it ends). The directory is 1777 (anyone creates,
only the owner deletes); the files 0666, so that another user's launch can open and lock
them. A probe reads the locks from /proc/locks, never taking one.
"""

import errno
import fcntl
import json
import os
import pwd
import re
import stat
import time

CLAIM_DIR_MODE = 0o1777
CLAIM_FILE_MODE = 0o666
CLAIM_BYTES = 4096
CLAIM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ClaimRefused(Exception):
    """A GPU's claim cannot be taken: the claims directory or file is not usable (a host
    problem, reported like a launch that failed)."""


class GpuClaimed(ClaimRefused):
    """A GPU of the launch is claimed by another attempt (of any sheet): nothing started,
    the run is placed again."""


def claim_dir(path):
    """The claims directory, made 1777 if missing (whatever the umask); never a symlink."""
    path = os.path.expanduser(path)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, CLAIM_DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ClaimRefused("cannot create the GPU claims directory %s: %s" % (path, exc)) from None
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode):
        raise ClaimRefused("the GPU claims path %s is not a directory" % path)
    if found.st_uid == os.geteuid() and stat.S_IMODE(found.st_mode) != CLAIM_DIR_MODE:
        os.chmod(path, CLAIM_DIR_MODE)  # ours, made by hand: other users must create files too
    return path


def take_claims(spec, ns_root, host, uuids):
    """The open, locked claim files of the spec's GPUs (to hand to the supervisor), or
    ClaimRefused naming the attempt that holds one. `uuids`: {index: UUID} as nvidia-smi
    lists them; GPUs it does not list (TPU chips, a host without nvidia-smi) are not
    claimed."""
    where, accelerators = spec.get("gpu_claims"), spec.get("accelerators") or []
    wanted = [(a, uuids[a]) for a in accelerators if a in uuids and CLAIM_NAME_RE.match(uuids[a])]
    if not wanted:
        return []
    directory, held = claim_dir(where), []
    try:
        for index, uuid in wanted:
            held.append(_claim_one(directory, index, uuid))
        text = json.dumps(_claim_record(spec, ns_root, host)).encode("utf-8")
        for fd in held:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
    except ClaimRefused:
        _close_all(held)
        raise
    except OSError as exc:
        _close_all(held)
        raise ClaimRefused("GPU claim: %s" % exc) from None
    return held


def _close_all(fds):
    for fd in fds:
        os.close(fd)


def _claim_one(directory, index, uuid):
    path = os.path.join(directory, uuid)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, CLAIM_FILE_MODE)
    except OSError as exc:
        raise ClaimRefused(
            "cannot open the claim file of GPU %s (%s): %s; it must be a file every user "
            "can write (mode 0666) in a directory of mode 1777" % (index, path, exc.strerror)
        ) from None
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, CLAIM_FILE_MODE)  # whatever the umask: other users lock it too
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _claim_text(fd) if exc.errno in (errno.EAGAIN, errno.EACCES) else None
        os.close(fd)
        if holder is None:
            raise ClaimRefused("cannot lock the claim file of GPU %s: %s" % (index, exc)) from None
        raise GpuClaimed("GPU %s is claimed by %s" % (index, describe_claim(holder))) from None
    return fd


def _claim_record(spec, ns_root, host):
    return {
        "namespace": os.path.basename(ns_root.rstrip("/")),
        "run_id": spec.get("run_id"),
        "attempt": spec.get("attempt"),
        "host": host,
        "user": _me(),
        "claimed_at": int(time.time()),
    }


def _me():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _claim_text(fd):
    """What a claim file says (written by whoever holds it: any user), as a dict."""
    try:
        found = json.loads(os.pread(fd, CLAIM_BYTES, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def describe_claim(claim):
    run = claim.get("run_id") or "?"
    who = " of user %s" % claim["user"] if claim.get("user") else ""
    return "run %s of sheet %s%s" % (run, claim.get("namespace") or "?", who)


class ClaimLocks(object):
    """Which files hold an flock now, from /proc/locks (read once): looking never takes a
    lock, so a probe cannot make a concurrent launch find a GPU claimed. Without
    /proc/locks, a shared lock tried and dropped at once tells."""

    def __init__(self):
        self.locked = None
        try:
            with open("/proc/locks") as f:
                self.locked = set(_lock_ids(f.read(1 << 22)))
        except OSError:
            pass

    def held(self, fd):
        if self.locked is not None:
            st = os.fstat(fd)
            return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in self.locked
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


def _lock_ids(text):
    """(major, minor, inode) of every FLOCK held: `1: FLOCK ADVISORY WRITE pid fe:00:123 0 EOF`
    (device numbers in hex); waiting locks (`->`) are not held."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        dev = parts[5].split(":")
        try:
            yield int(dev[0], 16), int(dev[1], 16), int(dev[2])
        except (ValueError, IndexError):
            continue


def read_claim(directory, uuid, locks):
    """The claim on a GPU, or None when its file is missing or not locked (stale text)."""
    if not CLAIM_NAME_RE.match(uuid):
        return None
    try:
        fd = os.open(
            os.path.join(os.path.expanduser(directory), uuid),
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not locks.held(fd):
            return None
        claim = _claim_text(fd)
        found = {k: str(claim.get(k) or "")[:100] for k in ("namespace", "run_id", "user")}
        found["namespace"] = found["namespace"] or "?"  # locked, its text not written yet
        return found
    finally:
        os.close(fd)
