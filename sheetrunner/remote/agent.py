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

import base64
import errno
import io
import itertools
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

from sheetrunner.remote import codestore, gpu_claims, protocol
from sheetrunner.remote.protocol import AttemptPaths

TAIL_BYTES = 65536
METRIC_PREFIX = "SHEETRUNNER "
METRIC_PREFIX_BYTES = METRIC_PREFIX.encode()
REQUEST_BYTES = 4 << 20  # stdin: a probe request or a launch spec
REFUSED_EXIT = 3
# Non-empty while this process serves requests (`serve`): facts may be kept.
RESIDENT = []  # type: list[bool]
USAGE = """usage: agent.pyz COMMAND ...
  probe    NS_ROOT HOST                      request on stdin
  facts    ROOT                              the host alone, no runs
  programs                                   which programs exist (request on stdin)
  launch   NS_ROOT HOST                      spec on stdin
  kill     NS_ROOT HOST RUN_ID ATTEMPT [GRACE_S]
  tail     NS_ROOT HOST RUN_ID ATTEMPT SIZE|+OFFSET
  history  NS_ROOT HOST RUN_ID ATTEMPT MOST
  code-need, code-build, setup, gc           (sheetrunner/remote/codestore.py)
  supervise ATTEMPT_DIR                      (started by launch)
  reap     ATTEMPT_DIR GRACE_S               (started by kill when the supervisor is gone)
  serve                                      resident: one JSON request per stdin line"""


class Refused(Exception):
    """A value that is not in the protocol's format: nothing was touched."""


def main(argv):
    handlers = {
        "probe": probe,
        "facts": facts,
        "programs": programs,
        "launch": launch,
        "supervise": supervise,
        "kill": kill,
        "reap": reap,
        "tail": tail,
        "history": history,
        "code-need": codestore.code_need,
        "code-build": codestore.code_build,
        "setup": codestore.setup,
        "setup-run": codestore.setup_run,
        "gc": lambda args: codestore.gc(args, unfinished_attempts),
        "serve": serve,
    }
    if len(argv) >= 2 and argv[1].startswith("slurm-"):  # a cluster's login node or its nodes
        from sheetrunner.remote import slurm_agent

        handlers[argv[1]] = lambda args: slurm_agent.main(argv[1], args, sys.modules[__name__])
    if len(argv) < 2 or argv[1] not in handlers:
        sys.exit(USAGE)
    try:
        handlers[argv[1]](argv[2:])
    except (Refused, codestore.Refused) as exc:
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
    """The JSON object on stdin (empty stdin: an empty object), at most REQUEST_BYTES."""
    data = sys.stdin.buffer.read(REQUEST_BYTES + 1)
    if len(data) > REQUEST_BYTES:
        raise Refused("stdin over %d bytes" % REQUEST_BYTES)
    try:
        text = data.decode("utf-8")
        request = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
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


# A resident agent reads the boot id once: a reboot ends the process anyway.
_BOOT_ID = []  # type: list[str]


def boot_id():
    if _BOOT_ID:
        return _BOOT_ID[0]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            found = f.read().strip()
    except OSError:
        return "unknown"
    if RESIDENT:
        _BOOT_ID.append(found)
    return found


def _stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
        return text[text.rindex(")") + 2 :].split()
    except (OSError, ValueError):
        return None


def start_ticks(pid):
    """The process's start time in clock ticks since boot: pid plus this is unique."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20 or fields[0] == "Z":
        return None  # a zombie has finished
    return fields[19]


def session_of(pid):
    fields = _stat_fields(pid)
    try:
        return int(fields[3])
    except (TypeError, ValueError, IndexError):
        return None


def alive(pid, ticks):
    if os.path.exists("/proc/self/stat"):
        return ticks is not None and start_ticks(pid) == ticks
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def same_process(pid, ticks):
    """The process recorded (pid and start ticks), alive or a zombie not yet reaped: while it
    is either, its pid, and so its process group id, cannot name another process."""
    fields = _stat_fields(pid)
    return ticks is not None and bool(fields) and len(fields) >= 20 and fields[19] == ticks


# -- the processes of an attempt: found by the token every one of them inherits ----------------

ENVIRON_BYTES = 1 << 20  # a process's environment read, at most
CMDLINE_CHARS = 200
LEFTOVERS_LISTED = 20


def token_of(pid):
    """The attempt token in a process's environment, or None (unreadable: not ours)."""
    try:
        fd = os.open("/proc/%d/environ" % pid, os.O_RDONLY | CLOEXEC)
    except OSError:
        return None
    try:
        data = read_fd(fd, ENVIRON_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    key = protocol.ENV_ATTEMPT_TOKEN.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key) :].decode("ascii", "replace")
    return None


def attempt_processes(token, group=None):
    """Live processes of this user carrying `token` in their environment, or in process group
    `group`; never this process. Unreadable processes (another user's) are skipped."""
    if not token and not group:
        return []
    me, uid, found = os.getpid(), os.getuid(), []
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            if os.stat("/proc/%d" % pid).st_uid != uid:
                continue
        except OSError:
            continue
        fields = _stat_fields(pid)
        if not fields or fields[0] in ("Z", "X"):
            continue  # finished: nothing to stop
        in_group = group is not None and len(fields) > 2 and fields[2] == str(group)
        if in_group or (token and token_of(pid) == token):
            found.append(pid)
    return sorted(found)


def command_line(pid):
    try:
        fd = os.open("/proc/%d/cmdline" % pid, os.O_RDONLY | CLOEXEC)
    except OSError:
        return "?"
    try:
        data = read_fd(fd, 4096)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    text = data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    return (text or "?")[:CMDLINE_CHARS]


def send(pids, signals):
    """Each signal to each process; how many were there to signal."""
    reached = 0
    for pid in pids:
        try:
            for sig in signals:
                os.kill(pid, sig)
            reached += 1
        except OSError:
            pass
    return reached


def signal_group(pid, ticks, signals):
    """Each signal to the job's process group, when the recorded leader is still the process
    recorded (alive or a zombie): never a group whose id was reused."""
    if pid is None or not same_process(pid, ticks):
        return False
    try:
        for sig in signals:
            os.killpg(pid, sig)
        return True
    except OSError:
        return False


STOP_SIGNALS = (signal.SIGTERM, signal.SIGCONT)  # a stopped process acts on SIGTERM once continued


def read_token(paths):
    """The attempt's token (written by launch), or None when absent or not in its format."""
    try:
        text = read_text(paths.token)
    except Damaged:
        return None
    return text if protocol.is_token(text) else None


# -- accelerators -------------------------------------------------------------------------------

GPU_QUERY = "index,uuid,name,memory.used,memory.total,utilization.gpu"
ECC_FIELD = "ecc.errors.uncorrected.volatile.total"
LOST_MARKS = ("[GPU is lost]", "[Unknown Error]")


def nvidia_gpus(our_sessions, our_tokens=frozenset(), claims_dir=None):
    """GPUs through NVML where libnvidia-ml loads (no process started), else from nvidia-smi:
    one `nvidia-smi -q -x` call, or the two CSV queries where that is refused. A GPU used by
    a process outside our runs (not in the session of one of our jobs, not carrying one of
    our attempts' tokens) is foreign, with the users of those processes where /proc shows
    them; one reported lost or with uncorrected ECC errors is not healthy; one whose claim
    file is locked is claimed (by the run the file names). A failing query is gpu_error;
    the GPUs it still reported count."""
    nvml = Nvml.get()
    if nvml is not None:
        gpus, apps, error = nvml.sample()
    elif shutil.which("nvidia-smi") is None:
        return [], ""
    else:
        gpus, apps, error = _smi_sample()
    foreign = {}
    for uuid, pid in apps:
        if not _ours(pid, our_sessions, our_tokens):
            users = foreign.setdefault(uuid, set())
            users.update(u for u in [user_of(pid)] if u)
    locks = gpu_claims.ClaimLocks()
    for gpu in gpus:
        gpu["foreign"] = gpu["uuid"] in foreign
        if foreign.get(gpu["uuid"]):
            gpu["foreign_users"] = sorted(foreign[gpu["uuid"]])
        claim = gpu_claims.read_claim(claims_dir, gpu["uuid"], locks) if claims_dir else None
        if claim is not None:
            gpu["claim"] = claim
    return gpus, error


def _smi_sample():
    """(gpus, [(gpu uuid, pid)], error) from nvidia-smi: one XML call where it answers one."""
    if not _SMI_XML_REFUSED:
        found, error = _smi_xml()
        if found is not None or error.endswith(SMI_HUNG):
            return found[0] if found else [], found[1] if found else [], error
    gpus, apps, error = _smi_csv()
    if not error and RESIDENT:
        _SMI_XML_REFUSED.append(True)  # this nvidia-smi cannot: ask the CSV queries from now on
    return gpus, apps, error


_SMI_XML_REFUSED = []  # type: list[bool]


def _smi_csv():
    """The two CSV queries: the GPUs, then the compute processes."""
    errors = []
    rows, error = _smi(["--query-gpu=" + GPU_QUERY + "," + ECC_FIELD])
    if error and "not a valid field" in error and ECC_FIELD in error:  # a driver without it
        rows, error = _smi(["--query-gpu=" + GPU_QUERY])
    if error:
        errors.append(error)
    apps = []
    if not error.endswith(SMI_HUNG):  # one that hung once would hang again: one wait per probe
        found, error = _smi(["--query-compute-apps=gpu_uuid,pid,used_memory"])
        if error and error not in errors:
            errors.append(error)
        apps = [(a[0], int(a[1])) for a in found if len(a) >= 2 and a[1].isdigit()]
    gpus = []
    for row in rows:
        if len(row) < 6:
            continue
        gpu = {
            "index": row[0],
            "uuid": row[1],
            "name": row[2],
            "memory_used_mib": _int(row[3]),
            "memory_total_mib": _int(row[4]),
            "utilization_pct": _int(row[5]),
            "healthy": True,
        }
        health = _gpu_health(row)
        if health:
            gpu.update(healthy=False, health=health)
        gpus.append(gpu)
    return gpus, apps, "; ".join(errors)


def _smi_xml():
    """((gpus, apps), "") from one `nvidia-smi -q -x`; (None, why) when it failed or printed
    no document this parser knows (the caller then asks the CSV queries)."""
    text, error = _smi_run(["nvidia-smi", "-q", "-x"])
    if error:
        return None, error
    try:
        import xml.etree.ElementTree as ElementTree

        root = ElementTree.fromstring(text)
    except Exception:  # no XML, or no xml module: the CSV queries still work
        return None, ""
    if root.tag != "nvidia_smi_log":
        return None, ""
    gpus, apps = [], []
    for index, node in enumerate(root.findall("gpu")):
        gpu, pids = _xml_gpu(index, node)
        gpus.append(gpu)
        apps.extend((gpu["uuid"], pid) for pid in pids)
    return (gpus, apps), ""


def _xml_gpu(index, node):
    """One <gpu> element: the GPU's dict and the pids of its compute processes."""
    uuid = (node.findtext("uuid") or "").strip()
    gpu = {
        "index": str(index),
        "uuid": uuid,
        "name": (node.findtext("product_name") or "").strip(),
        "memory_used_mib": _int(_first_word(node.findtext("fb_memory_usage/used"))),
        "memory_total_mib": _int(_first_word(node.findtext("fb_memory_usage/total"))),
        "utilization_pct": _int(_first_word(node.findtext("utilization/gpu_util"))),
        "healthy": True,
    }
    errors = _xml_uncorrected(node)
    if errors:
        gpu.update(healthy=False, health=_ecc_text(errors))
    health = _lost_mark([t for t in (e.text for e in node.iter()) if t])
    if health:
        gpu.update(healthy=False, health=health)
    pids = []
    for proc in node.findall("processes/process_info"):
        kind = (proc.findtext("type") or "C").strip()
        pid = (proc.findtext("pid") or "").strip()
        if "C" in kind and pid.isdigit():
            pids.append(int(pid))
    return gpu, pids


def _xml_uncorrected(node):
    """Volatile uncorrected ECC errors: `*_uncorrectable` counters (newer drivers) or
    double_bit/total (older ones); "N/A" counts as none."""
    volatile = node.find("ecc_errors/volatile")
    if volatile is None:
        return 0
    counts = [c.text for c in volatile if c.tag.endswith("uncorrectable")]
    counts.append(volatile.findtext("double_bit/total"))
    return sum(_int(c) or 0 for c in counts if c)


def _first_word(text):
    return (text or "").strip().split(" ")[0]


def _ecc_text(errors):
    return "%d uncorrected ECC error%s" % (errors, "" if errors == 1 else "s")


NVML_LIBRARY = "libnvidia-ml.so.1"
NVML_LIBRARY_ENV = "SHEETRUNNER_NVML_LIBRARY"  # another path to load instead (tests)
NVML_SUCCESS = 0
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_GPU_IS_LOST = 15
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_TEXT = 96  # NVML_DEVICE_NAME_V2_BUFFER_SIZE; a UUID needs 80
NVML_PROCESS_FUNCTIONS = (  # newest first; _v3 and _v2 share nvmlProcessInfo_t's layout
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceGetComputeRunningProcesses",
)


class Nvml(object):
    """The NVIDIA driver's library through ctypes: GPUs read in-process, no nvidia-smi.

    Loaded once per process (a resident agent keeps it for its life); what never changes
    (index, name, UUID, memory total) is read at load, a sample asks only for memory used,
    utilisation, uncorrected ECC errors and compute processes."""

    _loaded = []  # type: list[Nvml | None]

    @classmethod
    def get(cls):
        if not cls._loaded:
            cls._loaded.append(cls.load(os.environ.get(NVML_LIBRARY_ENV) or NVML_LIBRARY))
        return cls._loaded[0]

    @classmethod
    def load(cls, name):
        """The library ready to sample, or None where it does not load or init fails."""
        try:
            import ctypes

            lib = ctypes.CDLL(name)
            if lib.nvmlInit_v2() != NVML_SUCCESS:
                return None
            return cls(lib, ctypes)
        except (ImportError, OSError, AttributeError):
            return None

    def __init__(self, lib, ctypes):
        self.lib, self.c = lib, ctypes
        c = ctypes

        class Memory(c.Structure):
            _fields_ = [("total", c.c_ulonglong), ("free", c.c_ulonglong), ("used", c.c_ulonglong)]

        class Utilization(c.Structure):
            _fields_ = [("gpu", c.c_uint), ("memory", c.c_uint)]

        class ProcessInfo(c.Structure):  # nvmlProcessInfo_t (_v2, _v3)
            _fields_ = [
                ("pid", c.c_uint),
                ("usedGpuMemory", c.c_ulonglong),
                ("gpuInstanceId", c.c_uint),
                ("computeInstanceId", c.c_uint),
            ]

        class ProcessInfoV1(c.Structure):  # nvmlProcessInfo_v1_t
            _fields_ = [("pid", c.c_uint), ("usedGpuMemory", c.c_ulonglong)]

        self.Memory, self.Utilization = Memory, Utilization
        lib.nvmlErrorString.restype = c.c_char_p
        lib.nvmlErrorString.argtypes = [c.c_int]
        self.processes = None
        structs = {"nvmlDeviceGetComputeRunningProcesses": ProcessInfoV1}
        for name in NVML_PROCESS_FUNCTIONS:
            struct = structs.get(name, ProcessInfo)
            function = getattr(lib, name, None)
            if function is not None:
                function.argtypes = [c.c_void_p, c.POINTER(c.c_uint), c.c_void_p]
                self.processes = (name, function, struct)
                break
        self.devices = self._devices()

    def _devices(self):
        """Each GPU's facts that never change, and its handle."""
        c, lib = self.c, self.lib
        count = c.c_uint(0)
        self._check("nvmlDeviceGetCount_v2", lib.nvmlDeviceGetCount_v2(c.byref(count)))
        devices = []
        for index in range(count.value):
            handle = c.c_void_p()
            rc = lib.nvmlDeviceGetHandleByIndex_v2(c.c_uint(index), c.byref(handle))
            device = {"index": str(index), "handle": handle, "rc": rc}
            if rc == NVML_SUCCESS:
                device["name"] = self._text(lib.nvmlDeviceGetName, handle)
                device["uuid"] = self._text(lib.nvmlDeviceGetUUID, handle)
                memory = self.Memory()
                if lib.nvmlDeviceGetMemoryInfo(handle, c.byref(memory)) == NVML_SUCCESS:
                    device["memory_total_mib"] = memory.total >> 20
            devices.append(device)
        return devices

    def _text(self, function, handle):
        buffer = self.c.create_string_buffer(NVML_TEXT)
        if function(handle, buffer, self.c.c_uint(NVML_TEXT)) != NVML_SUCCESS:
            return ""
        return buffer.value.decode("utf-8", "replace")

    def _check(self, what, rc):
        if rc != NVML_SUCCESS:
            raise OSError("NVML %s: %s" % (what, self.error(rc)))

    def error(self, rc):
        text = self.lib.nvmlErrorString(rc)
        return text.decode("utf-8", "replace") if text else "error %d" % rc

    def sample(self):
        """(gpus, [(gpu uuid, pid)], error): what changes, read now."""
        gpus, apps, errors = [], [], []
        for device in self.devices:
            gpu, pids, error = self._sample(device)
            gpus.append(gpu)
            apps.extend((gpu["uuid"], pid) for pid in pids)
            if error and error not in errors:
                errors.append(error)
        return gpus, apps, "; ".join(errors)

    def _sample(self, device):
        c, lib, handle = self.c, self.lib, device["handle"]
        gpu = {
            "index": device["index"],
            "uuid": device.get("uuid", ""),
            "name": device.get("name", ""),
            "memory_total_mib": device.get("memory_total_mib"),
            "memory_used_mib": None,
            "utilization_pct": None,
            "healthy": True,
        }
        if device["rc"] != NVML_SUCCESS:
            return self._unhealthy(gpu, device["rc"]), [], ""
        memory, use, ecc = self.Memory(), self.Utilization(), c.c_ulonglong(0)
        calls = (
            ("nvmlDeviceGetMemoryInfo", lib.nvmlDeviceGetMemoryInfo(handle, c.byref(memory))),
            (
                "nvmlDeviceGetUtilizationRates",
                lib.nvmlDeviceGetUtilizationRates(handle, c.byref(use)),
            ),
        )
        for what, rc in calls:
            if rc == NVML_ERROR_GPU_IS_LOST:
                return self._unhealthy(gpu, rc), [], ""
            if rc not in (NVML_SUCCESS, NVML_ERROR_NOT_SUPPORTED):
                return gpu, [], "NVML %s: %s" % (what, self.error(rc))
        gpu["memory_used_mib"] = memory.used >> 20
        gpu["utilization_pct"] = use.gpu if calls[1][1] == NVML_SUCCESS else None
        rc = lib.nvmlDeviceGetTotalEccErrors(
            handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC, c.byref(ecc)
        )
        if rc == NVML_SUCCESS and ecc.value:
            gpu.update(healthy=False, health=_ecc_text(ecc.value))
        pids, error = self._pids(handle)
        return gpu, pids, error

    def _unhealthy(self, gpu, rc):
        lost = rc == NVML_ERROR_GPU_IS_LOST
        gpu.update(healthy=False, health="GPU is lost" if lost else "NVML: %s" % self.error(rc))
        return gpu

    def _pids(self, handle):
        """The GPU's compute processes' pids: asked with no room first, then with room for
        the count it gave (and a few more that may have started since)."""
        if self.processes is None:
            return [], ""
        name, function, struct = self.processes
        c = self.c
        count = c.c_uint(0)
        rc = function(handle, c.byref(count), None)
        for _ in range(3):
            if rc == NVML_SUCCESS:
                return [], ""
            if rc != NVML_ERROR_INSUFFICIENT_SIZE:
                break
            room = count.value + 8
            infos, count = (struct * room)(), c.c_uint(room)
            rc = function(handle, c.byref(count), infos)
            if rc == NVML_SUCCESS:
                return [infos[i].pid for i in range(count.value)], ""
        return [], "NVML %s: %s" % (name, self.error(rc))


def user_of(pid):
    """The name of the user a process runs as, or "" when /proc does not tell (hidepid)."""
    try:
        return pwd.getpwuid(os.stat("/proc/%d" % pid).st_uid).pw_name
    except (OSError, KeyError):
        return ""


def gpu_uuids():
    """{index: UUID} of this host's GPUs as nvidia-smi lists them ({} without nvidia-smi)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    rows, _ = _smi(["--query-gpu=index,uuid"])
    return {r[0]: r[1] for r in rows if len(r) >= 2}


def _ours(pid, sessions, tokens):
    if session_of(pid) in sessions:
        return True
    return bool(tokens) and token_of(pid) in tokens


def _lost_mark(cells):
    """ "GPU is lost" or "nvidia-smi: Unknown Error" when a cell shows such a mark, else ""."""
    for mark in LOST_MARKS:
        if any(mark.lower() in cell.lower() for cell in cells):
            return "GPU is lost" if "lost" in mark else "nvidia-smi: Unknown Error"
    return ""


def _gpu_health(row):
    """Why a GPU's row says it cannot be used, or "" when it can."""
    lost = _lost_mark(row)
    if lost:
        return lost
    if len(row) >= 7:
        errors = _int(row[6])
        if errors:
            return _ecc_text(errors)
    return ""


SMI_TIMEOUT_S = 15
SMI_HUNG = "no answer within %ds" % SMI_TIMEOUT_S


def _smi(query):
    """(rows, error): nvidia-smi's CSV rows and, when it failed, why."""
    text, error = _smi_run(["nvidia-smi"] + query + ["--format=csv,noheader,nounits"])
    rows = [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]
    return (rows, "") if not error else ([r for r in rows if len(r) >= 6], error)


def _smi_run(argv):
    """(stdout, error): what nvidia-smi printed and, when it failed, why."""
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=SMI_TIMEOUT_S,
            universal_newlines=True,
            errors="replace",
        )
    except subprocess.TimeoutExpired:
        return "", "nvidia-smi failed: " + SMI_HUNG
    except (OSError, subprocess.SubprocessError) as exc:
        return "", "nvidia-smi failed: %s" % exc
    if done.returncode == 0:
        return done.stdout, ""
    said = (done.stderr.strip() or done.stdout.strip()).splitlines()
    reason = said[-1][:300] if said else ""
    error = "nvidia-smi failed: exit status %d%s" % (
        done.returncode,
        ": " + reason if reason else "",
    )
    return done.stdout, error


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


# -- files in an attempt directory: hostile input ----------------------------------------------
#
# A job runs as this user and may write anything into its attempt directory: junk, huge files,
# FIFOs, directories, symlinks to files elsewhere. Every file there is opened without following
# a symlink and read bounded; what cannot be what the agent wrote is Damaged, and the reason is
# reported for that attempt alone. Nothing is ever written through a name a job could have
# planted: files are created O_EXCL (temp names) or O_NOFOLLOW, then renamed into place.

SMALL_FILE_BYTES = 65536  # pid, exit_code, stop, lost
SPEC_FILE_BYTES = 1 << 20  # spec.json; launch refuses a spec that would not fit
SUMMARY_FILE_BYTES = 4 << 20  # metrics.summary.json (200 names of up to 127 points fit easily)
SUMMARY_READ_BYTES = 1 << 20  # new metrics read per probe: a huge file is caught up over probes
ANSWER_BYTES = 128 << 10  # one attempt's part of the probe's answer
MAX_SUMMARY_NAMES = protocol.MAX_REPORT_KEYS  # metric names kept in the summary and the latest
VALUE_CHARS = 256  # a metric value's text in the probe (strings are cut, bigger lists dropped)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as `pid` must not hang the probe
CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class Damaged(Exception):
    """A file of an attempt that cannot be what sheetrunner wrote there: the reason goes into
    that attempt's answer (`damaged`), never up to the probe of the host."""


def _kib(size):
    return "%d KiB" % (size >> 10) if size < 1 << 20 else "%d MiB" % (size >> 20)


def open_read(path):
    """A descriptor of the regular file at `path`, opened without following a symlink and
    without blocking on a FIFO; None when there is nothing there."""
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Damaged(
            "%s is a symlink" % name
            if os.path.islink(path)
            else "%s unreadable (%s)" % (name, exc.strerror)
        ) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        mode = 0
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Damaged("%s is not a regular file" % name)
    return fd


def read_fd(fd, size):
    """Up to `size` bytes from a descriptor's position."""
    parts, left = [], size
    while left > 0:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_bounded(path, limit=SMALL_FILE_BYTES):
    """A file's bytes, or None when absent; Damaged when it is not a regular file or is
    over `limit` (a job can make any file huge; nothing reads more than it needs)."""
    fd = open_read(path)
    if fd is None:
        return None
    try:
        data = read_fd(fd, limit + 1)
    except OSError as exc:
        raise Damaged("%s unreadable (%s)" % (os.path.basename(path), exc.strerror)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise Damaged("%s over %s" % (os.path.basename(path), _kib(limit)))
    return data


def read_text(path, limit=SMALL_FILE_BYTES):
    """A small file's text, stripped, or None when absent."""
    data = read_bounded(path, limit)
    if data is None:
        return None
    try:
        return data.decode("utf-8").strip()
    except ValueError:
        raise Damaged("%s is not text" % os.path.basename(path)) from None


def read_json(path, limit=SMALL_FILE_BYTES):
    """A JSON file's value, or None when absent."""
    text = read_text(path, limit)
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise Damaged("%s is not JSON" % os.path.basename(path)) from None


def guarded(damage, default, function, *args):
    """`function(*args)`, or `default` with the reason added to `damage` when a file it
    reads is damaged."""
    try:
        return function(*args)
    except Damaged as exc:
        damage.append(str(exc))
        return default


def create_file(path, flags=os.O_WRONLY):
    """A new or existing regular file opened for writing, never through a symlink, mode 0600
    whatever the umask when it is created here."""
    fd = os.open(path, flags | os.O_CREAT | NOFOLLOW | NONBLOCK | CLOEXEC, protocol.FILE_MODE)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if info.st_size == 0 and info.st_mode & 0o777 != protocol.FILE_MODE:
            os.fchmod(fd, protocol.FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path, text):
    """Replace `path` with `text`: a fresh temp file (O_EXCL, so nothing a job planted is
    written through), mode 0600, fsync, rename over whatever was there (a symlink is
    replaced, never followed)."""
    tmp = "%s.tmp.%d.%s" % (path, os.getpid(), protocol.random_base36(6))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, protocol.FILE_MODE)
    try:
        os.fchmod(fd, protocol.FILE_MODE)
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
        os.close(fd)
        fd = None
        os.replace(tmp, path)
    except BaseException:
        if fd is not None:
            os.close(fd)
        _unlink(tmp)
        raise


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def make_dirs(path):
    """mkdir -p where every directory created is 0700 whatever the umask (os.makedirs
    leaves the parents it creates to the umask)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_dirs(parent)
    make_dir(path, exist_ok=True)


def make_dir(path, exist_ok=False):
    """One directory, 0700; FileExistsError when it is there and `exist_ok` is false."""
    try:
        os.mkdir(path, protocol.DIR_MODE)
    except FileExistsError:
        if exist_ok and os.path.isdir(path):
            return
        raise
    os.chmod(path, protocol.DIR_MODE)


def is_real_dir(path):
    """A directory that is not a symlink (lstat): a job may replace one with a link."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _mtime(path, default=None):
    """When a file changed, from lstat: a symlink tells its own time, not its target's."""
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return default


# -- one attempt -------------------------------------------------------------------------------

EXIT_CODE_RE = re.compile(r"^-?[0-9]{1,6}$")
PID_RE = re.compile(r"^[0-9]{1,10}$")
TICKS_RE = re.compile(r"^[0-9]{1,20}$|^None$")
BOOT_RE = re.compile(r"^[!-~]{1,64}$")


def _whole(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def exit_code_of(paths, damage):
    """(written, code): the supervisor's exit code. Anything at that name counts as written
    (the attempt ended); a code that is not a number is None and noted."""
    if not os.path.lexists(paths.exit_code):
        return False, None
    try:
        text = read_text(paths.exit_code)
    except Damaged as exc:
        damage.append(str(exc))
        return True, None
    if text is None:  # gone between the two looks
        return False, None
    first = text.split()[0] if text else ""
    if not EXIT_CODE_RE.match(first):
        damage.append("exit_code is not a number")
        return True, None
    return True, int(first)


def pid_record(paths, damage):
    """(job pid, its start ticks, boot id, supervisor pid, its start ticks) from the pid
    file, or None when it is absent or not in the form the supervisor writes (noted)."""
    text = guarded(damage, None, read_text, paths.pid)
    if text is None:
        return None
    parts = text.split()
    if not _pid_parts_valid(parts):
        damage.append("pid file not in the agent's format")
        return None
    pid = int(parts[0])
    sup = int(parts[3]) if len(parts) >= 5 else None
    if sup is not None and sup <= 1:
        sup = None
    return pid, parts[1], parts[2], sup, parts[4] if sup else None


def _pid_parts_valid(parts):
    if len(parts) not in (3, 5) or not PID_RE.match(parts[0]) or int(parts[0]) <= 1:
        return False
    if not TICKS_RE.match(parts[1]) or not BOOT_RE.match(parts[2]):
        return False
    return len(parts) == 3 or (
        PID_RE.match(parts[3]) is not None and TICKS_RE.match(parts[4]) is not None
    )


REBOOTED = "host rebooted"
SUPERVISOR_KILLED = "supervisor killed; outcome unknown"
SUPERVISOR_GONE = "supervisor gone"


def supervisor_record(paths, damage):
    """(pid, start ticks, boot id) of the supervisor, written by launch; None when absent or
    not in that form."""
    text = guarded(damage, None, read_text, paths.supervisor)
    parts = text.split() if text else []
    if len(parts) != 3 or not PID_RE.match(parts[0]) or int(parts[0]) <= 1:
        return None
    if not TICKS_RE.match(parts[1]) or not BOOT_RE.match(parts[2]):
        return None
    return int(parts[0]), parts[1], parts[2]


def attempt_state(paths, boot, damage=None, mark=True):
    """(state, exit_code, job session, reason) of an attempt directory; see
    model.AttemptState. Facts only: an attempt whose job has not been recorded yet is
    `starting` however old (the daemon judges that against its launch timeout); `lost` is
    reported only when the supervisor is known gone without an exit code, with the reason."""
    damage = [] if damage is None else damage
    if not os.path.lexists(paths.dir):
        return "missing", None, None, ""
    if not is_real_dir(paths.dir):
        damage.append("attempt directory is not a directory")
        return "lost", None, None, "attempt directory is not a directory"
    written, code = exit_code_of(paths, damage)
    if written:
        return "exited", code, None, ""
    record = pid_record(paths, damage)
    if record is None:
        sup = supervisor_record(paths, damage)
        if sup is None:
            return "starting", None, None, ""
        if sup[2] != boot:
            return _gone(paths, REBOOTED, boot, mark)
        if alive(sup[0], sup[1]):
            # the supervisor records the job's pid right after starting it: a pid file that is
            # there but damaged means the job runs
            state = "running" if os.path.lexists(paths.pid) else "starting"
            return state, None, None, ""
        return _ended_without_code(paths, boot, damage, mark)
    pid, ticks, job_boot, sup_pid, sup_ticks = record
    if job_boot != boot:
        return _gone(paths, REBOOTED, boot, mark)
    if sup_pid and alive(sup_pid, sup_ticks):
        return "running", None, pid, ""
    if alive(pid, ticks):
        return "running", None, pid, SUPERVISOR_GONE if sup_pid else ""
    return _ended_without_code(paths, boot, damage, mark)


def file_state(paths, damage):
    """(state, exit_code, None, "") of an attempt from its files alone: exited once the exit
    code is written, running once the job's pid is recorded, starting before."""
    if not os.path.lexists(paths.dir):
        return "missing", None, None, ""
    written, code = exit_code_of(paths, damage)
    if written:
        return "exited", code, None, ""
    return ("running" if os.path.lexists(paths.pid) else "starting"), None, None, ""


def _ended_without_code(paths, boot, damage, mark):
    written, code = exit_code_of(paths, damage)  # it may have ended just now
    if written:
        return "exited", code, None, ""
    return _gone(paths, SUPERVISOR_KILLED, boot, mark)


def _gone(paths, reason, boot, mark):
    if mark:
        _lost(paths, reason, contain=reason != REBOOTED)
    return "lost", None, None, reason


def _lost(paths, reason, contain=False):
    """Gone for good (host rebooted, or killed with its supervisor): mark it, so the scan
    for unfinished attempts skips it from now on. A `lost` a job planted (a symlink, a
    directory) is left as it is: it marks the attempt ended all the same. The first time,
    on the same boot, what is left of the attempt's processes is stopped (by a detached
    reaper: the probe never waits)."""
    if os.path.lexists(paths.lost):
        return "lost"
    try:
        fd = create_file(paths.lost)
        try:
            os.write(fd, (reason + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError:
        return "lost"
    if contain:
        token = read_token(paths)
        if token and send(attempt_processes(token), STOP_SIGNALS):
            detach(["reap", paths.dir, str(protocol.DEFAULT_GRACE_S)])
    return "lost"


def heartbeat_at(paths):
    """The newest sign of progress, on this host's clock: the job's heartbeat or output."""
    times = [
        t for t in (_mtime(p) for p in (paths.heartbeat, paths.log, paths.metrics)) if t is not None
    ]
    return max(times) if times else None


def started_at(paths):
    """When the attempt was claimed: spec.json is written right after the mkdir and never
    again (the directory's own mtime moves with every file created in it)."""
    return _mtime(paths.spec, _mtime(paths.dir))


def age(then, now):
    """Seconds since `then`, both on this host's clock; what the daemon gets instead of
    a time, so a skewed clock here cannot make a healthy run look hung."""
    return None if then is None else max(0.0, now - then)


def spec_facts(paths, damage):
    """What the daemon needs to rebuild the run from spec.json; empty values when the
    spec is missing or damaged."""
    spec = guarded(damage, None, read_json, paths.spec, SPEC_FILE_BYTES)
    if spec is not None and not isinstance(spec, dict):
        damage.append("spec.json is not an object")
    spec = spec if isinstance(spec, dict) else {}
    params = spec.get("params")
    accelerators = spec.get("accelerators")
    gpus = spec.get("gpus")
    return {
        "key": _str(spec.get("key")),
        "job": _str(spec.get("job")),
        "params": [
            [_str(p[0]), _str(p[1])]
            for p in (params if isinstance(params, list) else [])
            if isinstance(p, list) and len(p) == 2
        ],
        "gpus": gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 0,
        "accelerators": [_str(a) for a in (accelerators if isinstance(accelerators, list) else [])],
    }


def _str(value):
    return value if isinstance(value, str) else ("" if value is None else str(value))


def tail_of(path, size=TAIL_BYTES):
    """(the last `size` bytes of a file, whether they start at its beginning)."""
    fd = open_read(path)
    if fd is None:
        return b"", True
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        start = max(0, end - size)
        os.lseek(fd, start, os.SEEK_SET)
        return read_fd(fd, size), start == 0
    except OSError as exc:
        raise Damaged("%s unreadable (%s)" % (os.path.basename(path), exc.strerror)) from None
    finally:
        os.close(fd)


def tail_bytes(path, size=TAIL_BYTES):
    """The last `size` bytes of a file; empty when it is absent or damaged."""
    try:
        return tail_of(path, size)[0]
    except Damaged:
        return b""


def tail_lines(path, damage):
    """The whole lines of a file's last TAIL_BYTES: a first line cut by the tail's start is
    a fragment of some longer line (parsing it could invent a report), so it is left out."""
    data, whole = guarded(damage, (b"", True), tail_of, path)
    lines = data.split(b"\n")
    return lines if whole else lines[1:]


# -- metrics: reports a job wrote, bounded --------------------------------------------------------


def parse_report(line, prefix):
    """(report, names it had) from one line (bytes): a JSON object after `prefix`, else
    (None, 0). Lines over REPORT_LINE_BYTES are the caller's to skip."""
    if not line.startswith(prefix):
        return None, 0
    try:
        value = json.loads(line[len(prefix) :].decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None, 0
    if not isinstance(value, dict):
        return None, 0
    return bounded_report(value), len(value)


def bounded_report(report):
    """The first MAX_REPORT_KEYS metrics of a report, names and values of bounded size: what
    the probe carries stays small whatever a job writes."""
    kept = {}
    for name, value in itertools.islice(report.items(), protocol.MAX_REPORT_KEYS):
        if len(name) > protocol.METRIC_NAME_CHARS:
            continue
        value = _bounded_value(value)
        if value is not _DROP:
            kept[name] = value
    return kept


_DROP = object()


def _bounded_value(value):
    if value is None or isinstance(value, (bool, int, float)):
        return value if not isinstance(value, int) or abs(value) < 10**18 else float(value)
    if isinstance(value, str):
        return value[:VALUE_CHARS]
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return _DROP
    return value if len(text) <= VALUE_CHARS else _DROP


def latest_metrics(paths, damage):
    """The newest value of every metric reported lately (a loss every step, an accuracy
    every epoch: both show), from metrics.jsonl, else `SHEETRUNNER {...}` log lines; at
    most MAX_SUMMARY_NAMES names."""
    for source, prefix in ((paths.metrics, b""), (paths.log, METRIC_PREFIX_BYTES)):
        merged = {}
        for line in tail_lines(source, damage):
            found, _ = parse_report(line, prefix)
            if found:
                _merge(merged, found)
        if merged:
            return merged
    return {}


def _merge(merged, found):
    for name, value in found.items():
        if name in merged or len(merged) < MAX_SUMMARY_NAMES:
            merged[name] = value


def last_lines(path, damage, count=3, width=200):
    """The end of a failed job's log, for the row's message: usually the error itself."""
    text = guarded(damage, (b"", True), tail_of, path, 4096)[0].decode("utf-8", "replace")
    lines = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:])


HISTORY_POINTS = 64
SUMMARY_KEYS = ("min", "max", "history", "stride", "seen")
SKIP_KEYS = ("long", "cut", "names")


def metrics_summary(paths, damage):
    """Lowest, highest and a thinned history of every numeric metric of the attempt, with
    what was skipped on the way (`skipped`: reports over the line limit, reports cut to
    MAX_REPORT_KEYS, values of names beyond MAX_SUMMARY_NAMES).

    Kept incrementally in metrics.summary.json (the byte offset read so far), so a long
    run's metrics file is read once, not once a cycle, and at most SUMMARY_READ_BYTES of
    it per probe."""
    source, prefix = paths.metrics, b""
    if not os.path.lexists(source):
        source, prefix = paths.log, METRIC_PREFIX_BYTES
    summary = _stored_summary(paths.summary, source, damage)
    before = (summary["offset"], summary["skipping"])
    cut_by = paths if source == paths.log else None
    chunk = guarded(damage, b"", _read_from, source, summary, cut_by)
    for line in _new_lines(summary, chunk, prefix):
        found, names = parse_report(line, prefix)
        if found is None:
            continue
        if names > protocol.MAX_REPORT_KEYS:
            summary["skipped"]["cut"] += 1
        _add_to_summary(summary, found)
    if (summary["offset"], summary["skipping"]) != before:
        try:
            write_atomic(paths.summary, json.dumps(summary))
        except OSError:
            pass
    return summary


def _read_from(path, summary, cut_by=None):
    """What follows the summary's offset. For a log the supervisor has cut (`cut_by`: the
    attempt's paths), the offset counts the job's output, dropped bytes included: a position
    in the dropped part moves on to the first line after the marker."""
    fd = open_read(path)
    if fd is None:
        return b""
    try:
        offset = summary["offset"]
        cut = log_cut(cut_by, fd) if cut_by is not None else None
        if cut is not None:
            head, dropped, marker = cut
            if offset < head + dropped:
                summary["offset"], summary["skipping"] = head + dropped, False
                offset = head + dropped
            offset = offset - dropped + marker
        os.lseek(fd, offset, os.SEEK_SET)
        return read_fd(fd, SUMMARY_READ_BYTES)
    except OSError as exc:
        raise Damaged("%s unreadable (%s)" % (os.path.basename(path), exc.strerror)) from None
    finally:
        os.close(fd)


def _new_lines(summary, chunk, prefix):
    """The whole lines of `chunk` (read at summary's offset) within the line limit; moves the
    offset past what was consumed. A line over the limit is skipped (and counted when it is a
    report), even when it is longer than one chunk: `skipping` carries over to the next probe.
    A last line without its newline waits for the next probe, unless it is already too long."""
    limit, lines, pos = protocol.REPORT_LINE_BYTES, [], 0
    if summary["skipping"]:
        newline = chunk.find(b"\n")
        if newline < 0:
            summary["offset"] += len(chunk)
            return lines
        pos, summary["skipping"] = newline + 1, False
    while True:
        newline = chunk.find(b"\n", pos)
        if newline < 0:
            break
        if newline - pos > limit:
            _count_long(summary, chunk, pos, prefix)
        else:
            lines.append(chunk[pos:newline])
        pos = newline + 1
    if len(chunk) - pos > limit:
        _count_long(summary, chunk, pos, prefix)
        summary["skipping"], pos = True, len(chunk)
    summary["offset"] += pos
    return lines


def _count_long(summary, chunk, pos, prefix):
    if chunk.startswith(prefix, pos):
        summary["skipped"]["long"] += 1


def _stored_summary(store, source, damage):
    """The summary kept so far, or a fresh one when it is missing, for another source or
    not in the shape this agent writes (a job may have written anything there)."""
    summary = guarded(damage, None, read_json, store, SUMMARY_FILE_BYTES)
    fresh = {
        "source": source,
        "offset": 0,
        "min": {},
        "max": {},
        "history": {},
        "stride": {},
        "seen": {},
        "skipping": False,
        "skipped": dict.fromkeys(SKIP_KEYS, 0),
    }
    if not isinstance(summary, dict) or summary.get("source") != source:
        return fresh
    offset = summary.get("offset")
    if not _count(offset) or not all(isinstance(summary.get(k), dict) for k in SUMMARY_KEYS):
        return fresh
    skipped = summary.get("skipped")
    skipped = skipped if isinstance(skipped, dict) else {}
    summary["skipped"] = {k: skipped[k] if _count(skipped.get(k)) else 0 for k in SKIP_KEYS}
    summary["skipping"] = summary.get("skipping") is True
    return summary


def _count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _add_to_summary(summary, metrics):
    for name, value in metrics.items():
        if name in ("time",) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN: no order, no point
            continue
        if name not in summary["min"] and len(summary["min"]) >= MAX_SUMMARY_NAMES:
            summary["skipped"]["names"] += 1
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


def metrics_note(skipped):
    """What was left out of this attempt's metrics, in words for the row (empty: nothing)."""
    notes = []
    if skipped.get("long"):
        notes.append(
            "%s over %s skipped"
            % (_counted(skipped["long"], "report line"), _kib(protocol.REPORT_LINE_BYTES))
        )
    if skipped.get("cut"):
        notes.append(
            "%s cut to %d keys" % (_counted(skipped["cut"], "report"), protocol.MAX_REPORT_KEYS)
        )
    if skipped.get("names"):
        notes.append(
            "%s of metrics beyond the first %d names not summarised"
            % (_counted(skipped["names"], "value"), MAX_SUMMARY_NAMES)
        )
    return "; ".join(notes)


def _counted(count, noun):
    return "%d %s%s" % (count, noun, "" if count == 1 else "s")


# -- one attempt as the probe reports it ----------------------------------------------------------


def observe(paths, boot, now, files_only=False):
    """One attempt as the probe reports it; ages are measured here, on the host. Whatever
    its files hold, this answers for this attempt alone (`damaged` says what was wrong).
    `files_only`: the job runs on another machine (a cluster's node), whose processes this
    one cannot see: its files alone say how far it got, and nothing is marked lost."""
    damage = []
    try:
        if files_only:
            state, code, session, reason = file_state(paths, damage)
        else:
            state, code, session, reason = attempt_state(paths, boot, damage)
    except Exception as exc:  # a case the checks above missed must not fail the whole probe
        damage.append("agent could not read the attempt (%s)" % type(exc).__name__)
        state, code, session, reason = "lost", None, None, ""
    seen = {
        "run_id": os.path.basename(paths.run_dir),
        "attempt": int(os.path.basename(paths.dir)),
        "state": state,
        "exit_code": code,
        "log_path": paths.log,
        "spec": {},
        "heartbeat_age_s": None,
        "started_age_s": None,
    }
    if reason:
        seen["reason"] = reason
    if is_real_dir(paths.dir):
        try:
            _observe_files(paths, now, seen, damage)
        except Exception as exc:  # as above: this attempt's answer is partial, the probe goes on
            damage.append("agent could not read the attempt (%s)" % type(exc).__name__)
    if damage:
        seen["damaged"] = "; ".join(_unique(damage))
        if "log_tail" in seen:  # the core appends log_tail to a crash's message in the row
            seen["log_tail"] = " | ".join(
                p for p in ("damaged: " + seen["damaged"], seen["log_tail"]) if p
            )
    return fit_answer(seen), session


def _observe_files(paths, now, seen, damage):
    seen["spec"] = spec_facts(paths, damage)
    if seen["state"] != "missing":
        seen["heartbeat_age_s"] = age(heartbeat_at(paths), now)
        seen["started_age_s"] = age(started_at(paths), now)
        seen["metrics"] = latest_metrics(paths, damage)
        summary = metrics_summary(paths, damage)
        seen["summary"] = {k: summary[k] for k in ("min", "max", "history")}
        note = metrics_note(summary["skipped"])
        if note:
            seen["metrics_note"] = note
    if seen["state"] == "lost" or (seen["state"] == "exited" and seen["exit_code"] != 0):
        seen["log_tail"] = last_lines(paths.log, damage)
    if seen["state"] in ("exited", "lost"):
        left = leftovers_text(paths, damage)
        if left:
            seen["leftovers"] = left


LEFTOVERS_CHARS = 500


def leftovers_text(paths, damage):
    """What the supervisor found still running when the job ended (and killed): one short
    line for the row."""
    text = guarded(damage, None, read_text, paths.leftovers)
    if not text:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = "; ".join(lines).replace(":; ", ": ", 1)
    return said if len(said) <= LEFTOVERS_CHARS else said[: LEFTOVERS_CHARS - 1] + "\u2026"


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def fit_answer(seen):
    """One attempt's answer within ANSWER_BYTES: a job controls its metrics and its spec.json,
    and one attempt must never swell the probe of the host. What is left out is said in
    `metrics_note`; values are emptied in this order until it fits."""
    if _size(seen) <= ANSWER_BYTES:
        return seen
    summary = seen.get("summary") or {}
    steps = [
        ("summary history", "summary", dict(summary, history={})),
        ("summary", "summary", {"min": {}, "max": {}, "history": {}}),
        ("metrics", "metrics", {}),
        ("log tail", "log_tail", ""),
        ("spec", "spec", {}),
        ("damage details", "damaged", "answer too large"),
    ]
    left_out = []
    for what, field, empty in steps:
        if field in seen:
            seen[field] = empty
            left_out.append(what)
        if _size(seen) <= ANSWER_BYTES:
            break
    note = "%s left out: answer over %s" % (", ".join(left_out), _kib(ANSWER_BYTES))
    seen["metrics_note"] = "; ".join(p for p in (seen.get("metrics_note", "")[:1000], note) if p)
    return seen


def _size(value):
    return len(json.dumps(value))


def _attempt_numbers(run_dir):
    """The attempt directories of a run, by number: names in canonical form only, real
    directories only (a symlink named like an attempt is not one)."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(
        int(n)
        for n in names
        if protocol.is_attempt(n) and n == str(int(n)) and is_real_dir(os.path.join(run_dir, n))
    )


def _run_ids(runs_root):
    try:
        names = os.listdir(runs_root)
    except OSError:
        return []
    return [n for n in names if protocol.is_run_id(n) and is_real_dir(os.path.join(runs_root, n))]


def unfinished_attempts(runs_root):
    """Every attempt of this host without an exit code: candidates for fencing."""
    found = []
    for run_id in _run_ids(runs_root):
        for number in _attempt_numbers(os.path.join(runs_root, run_id)):
            attempt = os.path.join(runs_root, run_id, str(number))
            ended = any(os.path.lexists(os.path.join(attempt, f)) for f in ("exit_code", "lost"))
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
    attempts, sessions, tokens = [], set(), set()
    for run_id, attempt in sorted(keys):
        paths = AttemptPaths(ns_root, host, run_id, attempt)
        seen, session = observe(paths, boot, now)
        attempts.append(seen)
        if session:
            sessions.add(session)
        if seen["state"] in ("running", "starting"):
            token = read_token(paths)
            if token:
                tokens.add(token)
    make_dirs(ns_root)
    claims = request.get("gpu_claims") if isinstance(request.get("gpu_claims"), str) else None
    facts = host_facts(ns_root, boot, sessions, tokens, claims)
    print(json.dumps(dict(facts, attempts=attempts)))


def facts(args):
    """The host's facts alone, before any namespace is known (`sheetrunner doctor`): every
    GPU process counts as foreign, since no run is looked at."""
    if len(args) != 1:
        raise Refused("expected ROOT")
    root = os.path.expanduser(args[0])
    make_dirs(root)
    print(json.dumps(host_facts(root, boot_id(), set())))


def programs(args):
    """Whether each job's program and script exist on this host (`sheetrunner doctor`):
    stdin holds [{"workdir": ..., "argv": [...]}, ...]; for each, the items that are
    missing: the program (looked up on PATH unless it has a slash) and any item naming a
    .py or .sh file, relative to the workdir. Nothing is run."""
    found = []
    for job in json.loads(sys.stdin.read(1 << 20) or "[]"):
        workdir = os.path.expanduser(job.get("workdir") or "~")
        argv = [str(a) for a in job.get("argv", [])]
        missing = []
        if argv and not _program_exists(argv[0], workdir):
            missing.append(argv[0])
        for item in argv[1:]:
            if item.endswith((".py", ".sh")) and not os.path.isfile(os.path.join(workdir, item)):
                missing.append(item)
        found.append({"workdir_exists": os.path.isdir(workdir), "missing": missing})
    print(json.dumps(found))


def _program_exists(program, workdir):
    if "/" in program:
        return os.access(os.path.join(workdir, os.path.expanduser(program)), os.X_OK)
    return shutil.which(program) is not None


def host_facts(where, boot, sessions, tokens=frozenset(), claims_dir=None):
    gpus, gpu_error = nvidia_gpus(sessions, tokens, claims_dir)
    return {
        "boot_id": boot,
        "hostname": os.uname()[1],
        "load": os.getloadavg()[0],
        "disk_free_bytes": shutil.disk_usage(where).free,
        "gpus": gpus,
        "gpu_error": gpu_error,
        "tpu_chips": tpu_chips(),
    }


def launch(args):
    """Claim the attempt directory (mkdir is the lock), then start the supervisor detached.
    Everything in the spec is checked first: a refused spec creates nothing."""
    ns_root, host = where(args, 2)
    spec = read_request()
    paths = attempt_paths(ns_root, host, spec.get("run_id"), spec.get("attempt"))
    check_spec(spec)
    spec["attempt"] = int(spec["attempt"])
    spec.update(expanded_paths(spec, paths))
    text = json.dumps(spec, indent=2)
    if len(text.encode("utf-8")) > SPEC_FILE_BYTES:
        raise Refused("spec over %s" % _kib(SPEC_FILE_BYTES))
    try:  # before anything exists: a refusal leaves nothing behind
        uuids = gpu_uuids() if spec.get("gpu_claims") and spec.get("accelerators") else {}
        claims = gpu_claims.take_claims(spec, ns_root, host, uuids)
    except gpu_claims.GpuClaimed as exc:
        print(json.dumps({"launched": False, "refused": True, "reason": str(exc)}))
        return
    except gpu_claims.ClaimRefused as exc:  # an unusable claims directory: the host's problem
        raise Refused(str(exc)) from None
    try:  # the supervisor holds the claims from its start; this process lets go of them
        make_dirs(paths.run_dir)
        try:
            make_dir(paths.dir)
        except FileExistsError:
            print(
                json.dumps(
                    {
                        "launched": False,
                        "reason": "attempt directory already exists",
                        "dir": paths.dir,
                    }
                )
            )
            return
        write_atomic(paths.spec, text)
        write_atomic(paths.token, protocol.random_base36(protocol.TOKEN_LENGTH))
        sup = detach(["supervise", paths.dir], keep_fds=claims)  # it holds the claims from now on
        try:
            write_atomic(paths.supervisor, "%d %s %s" % (sup.pid, start_ticks(sup.pid), boot_id()))
        except OSError:
            pass  # the pid file the supervisor writes says as much once the job runs
        print(json.dumps({"launched": True, "dir": paths.dir}))
    finally:
        for fd in claims:
            os.close(fd)


def detach(command, keep_fds=()):
    """This agent with `command`, in a session of its own, detached from the caller (its
    stdin, stdout and stderr go nowhere): it outlives the connection that started it. A
    resident agent starts it through a child that exits at once, so that it is nobody's
    child here (as when an exec'd agent ends): what ends the serving process and its
    process tree (sshd's session torn down) never reaches a job's supervisor. `keep_fds`
    stay open in it (the GPU claims it holds while it lives)."""
    if not RESIDENT:
        return _spawn(command, keep_fds)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the intermediate: start the process, say its pid, exit
        code = 1
        try:
            os.close(reader)
            os.write(writer, str(_spawn(command, keep_fds).pid).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    try:
        said = os.read(reader, 32)
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    if not said.isdigit():
        raise OSError("could not start %s" % command[0])
    return Detached(int(said))


class Detached(object):
    def __init__(self, pid):
        self.pid = pid


def _spawn(command, keep_fds=()):
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        return subprocess.Popen(
            [sys.executable, os.path.abspath(sys.argv[0])] + command,
            stdin=devnull,
            stdout=devnull,
            stderr=devnull,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(keep_fds),
        )
    finally:
        os.close(devnull)


def check_spec(spec):
    """What reaches the job's argv, environment and paths must be something an exec can
    carry: text with no NUL, encodable for this host's file system. The sheet refuses such
    cells too; this is the host's own check (a NUL would otherwise crash the supervisor
    and leave the attempt lost)."""
    check_argv(spec.get("argv"))
    check_env(spec.get("env", {}))
    for key in ("workdir", "lib_dir", "checkpoint_dir", "gpu_claims"):
        value = spec.get(key)
        if value is not None and not carriable(value):
            raise Refused("%s is not a path an exec can carry: %r" % (key, value))
    accelerators = spec.get("accelerators", [])
    if not isinstance(accelerators, list) or not all(carriable(a) for a in accelerators):
        raise Refused("accelerators is not a list of plain strings")
    cap = spec.get("max_log_bytes")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, int) or cap < protocol.MIN_MAX_LOG_BYTES
    ):
        raise Refused("max_log_bytes is not a whole number >= %d" % protocol.MIN_MAX_LOG_BYTES)


def carriable(text):
    """A string an argv item, environment entry or path can hold."""
    if not isinstance(text, str) or "\0" in text:
        return False
    try:
        os.fsencode(text)
    except UnicodeError:
        return False
    return True


def check_argv(argv):
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise Refused("argv is not a non-empty list of strings")
    for item in argv:
        if not carriable(item):
            raise Refused("argv item an exec cannot carry (NUL or unencodable): %r" % item[:200])


def check_env(env):
    if not isinstance(env, dict):
        raise Refused("env is not an object")
    for name, value in env.items():
        if not carriable(name) or not name or "=" in name:
            raise Refused("env name an exec cannot carry: %r" % name[:200])
        if not carriable(value):
            raise Refused("env value of %s an exec cannot carry: %r" % (name, str(value)[:200]))


def expanded_paths(spec, paths):
    """The spec's paths with `~` expanded here, the checkpoint directory defaulted: the
    spec.json on disk says exactly where things went."""
    lib = spec.get("lib_dir")
    return {
        "checkpoint_dir": os.path.expanduser(spec.get("checkpoint_dir") or paths.checkpoints),
        "workdir": os.path.expanduser(spec.get("workdir") or "~"),
        "lib_dir": os.path.expanduser(lib) if isinstance(lib, str) and lib else None,
    }


def job_env(spec, paths, token):
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    env.update(
        {
            protocol.ENV_RUN_ID: os.path.basename(paths.run_dir),
            protocol.ENV_ATTEMPT: os.path.basename(paths.dir),
            protocol.ENV_RUN_DIR: paths.dir,
            protocol.ENV_CHECKPOINT_DIR: spec["checkpoint_dir"],
            protocol.ENV_METRICS_FILE: paths.metrics,
            protocol.ENV_HEARTBEAT_FILE: paths.heartbeat,
            protocol.ENV_ACCELERATORS: ",".join(spec.get("accelerators", [])),
            protocol.ENV_ATTEMPT_TOKEN: token,
            "PYTHONUNBUFFERED": "1",
        }
    )
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
    paths = attempt_paths(
        ns_root, os.path.basename(host_dir), os.path.basename(run_dir), os.path.basename(path)
    )
    if paths.dir != path:
        raise Refused("not an attempt directory: %r" % args[0])
    return paths


POLL_S = 0.1  # how often the supervisor looks at `stop` and at the job while it waits
DRAIN_S = 2.0  # how long output is still read once the job and its processes are gone


def supervise(args):
    """Run the job in its own session with its output through a pipe into a capped
    output.log, record its pid, stop it when asked (SIGTERM, then SIGKILL once the stop's
    grace has passed), stop whatever it left running when it ends, write its exit code.
    Whatever keeps the job from starting ends as exit code 127 with the reason in the log,
    never as a supervisor gone without a word (the attempt would look lost)."""
    paths = supervised_paths(args)
    if os.path.lexists(paths.stop):  # stopped before it started: never start it
        write_atomic(paths.exit_code, str(128 + signal.SIGTERM))
        return
    token = read_token(paths)
    if token is None:
        token = protocol.random_base36(protocol.TOKEN_LENGTH)
        write_atomic(paths.token, token)
    log = create_file(paths.log, os.O_RDWR | os.O_APPEND)  # read too: a cut copies its tail
    read_end, write_end = os.pipe()
    try:
        job, spec = start_job(paths, log, write_end, token)
    finally:
        os.close(write_end)
    if job is None:
        os.close(log)
        os.close(read_end)
        write_atomic(paths.exit_code, "127")
        return
    me = os.getpid()
    ticks = start_ticks(job.pid)
    write_atomic(paths.pid, "%d %s %s %d %s" % (job.pid, ticks, boot_id(), me, start_ticks(me)))
    Supervisor(paths, job, ticks, token, CappedLog(paths, log, _log_cap(spec)), read_end).run()


def _log_cap(spec):
    cap = spec.get("max_log_bytes")
    if isinstance(cap, int) and not isinstance(cap, bool) and cap >= protocol.MIN_MAX_LOG_BYTES:
        return cap
    return protocol.DEFAULT_MAX_LOG_BYTES


class Supervisor(object):
    """The loop of `supervise`: output, stop requests, the job's end, its leftovers."""

    def __init__(self, paths, job, ticks, token, log, pipe):
        self.paths, self.job, self.ticks, self.token, self.log = paths, job, ticks, token, log
        self.pipe = pipe
        self.stop = StopRequest(paths)
        self.killed = False
        signal.signal(signal.SIGTERM, lambda *_: self.stop.now(protocol.DEFAULT_GRACE_S))
        signal.signal(signal.SIGUSR1, lambda *_: self._warn_job())

    def _warn_job(self):
        """SIGUSR1 from a cluster's scheduler (its time limit is near): passed on to the job
        when it asked for it (sheetrunner.job's on_time_limit wrote the marker); a job that
        did not would be killed by it, so it is left to meet its limit."""
        if os.path.lexists(self.paths.file(protocol.USR1_MARKER)):
            signal_group(self.job.pid, self.ticks, (signal.SIGUSR1,))

    def run(self):
        while not self._job_ended():
            self._read_output(POLL_S)
            self._enforce_stop()
        leftovers = self._contain()
        self._drain()
        code = self.job.wait()
        self.log.close()
        if leftovers:
            try:
                write_atomic(self.paths.leftovers, leftovers)
            except OSError:
                pass
        write_atomic(self.paths.exit_code, str(128 - code if code < 0 else code))

    def _job_ended(self):
        """Whether the job's main process exited, without reaping it: while it is a zombie
        its process group id cannot be taken by another process."""
        try:
            return (
                os.waitid(os.P_PID, self.job.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
            )
        except ChildProcessError:
            return True

    def _read_output(self, timeout_s):
        """Copy what the job wrote into the log; False once the pipe has no writer left."""
        if self.pipe is None:
            time.sleep(timeout_s)
            return False
        try:
            ready = select.select([self.pipe], [], [], timeout_s)[0]
        except InterruptedError:
            return True
        if not ready:
            return True
        data = os.read(self.pipe, 1 << 16)
        if not data:
            os.close(self.pipe)
            self.pipe = None
            return False
        self.log.write(data)
        return True

    def _enforce_stop(self):
        fresh = self.stop.check()
        if fresh:  # a kill sends these itself; a stop written while the job started did not
            signal_group(self.job.pid, self.ticks, STOP_SIGNALS)
            send(attempt_processes(self.token), STOP_SIGNALS)
        if self.stop.deadline is not None and time.time() >= self.stop.deadline:
            self._kill_all()

    def _kill_all(self):
        signal_group(self.job.pid, self.ticks, (signal.SIGKILL,))
        send(attempt_processes(self.token, self.job.pid), (signal.SIGKILL,))
        self.killed = True

    def _contain(self):
        """Stop what the job left running (its token, its process group): SIGTERM, then
        SIGKILL after the grace. The text for the `leftovers` file, or ""."""
        found = attempt_processes(self.token, self.job.pid)
        if not found:
            return ""
        lines = ["%d %s" % (pid, command_line(pid)) for pid in found[:LEFTOVERS_LISTED]]
        if len(found) > LEFTOVERS_LISTED:
            lines.append("and %d more" % (len(found) - LEFTOVERS_LISTED))
        self.stop.check()
        grace = self.stop.grace if self.stop.deadline is not None else protocol.DEFAULT_GRACE_S
        deadline = time.time() + grace
        if self.stop.deadline is not None:
            deadline = min(deadline, max(self.stop.deadline, time.time()))
        signal_group(self.job.pid, self.ticks, STOP_SIGNALS)
        send(found, STOP_SIGNALS)
        while attempt_processes(self.token, self.job.pid):
            if time.time() >= deadline:
                self._kill_all()
                break
            self._read_output(POLL_S)
        return "killed after the job ended:\n" + "\n".join(lines) + "\n"

    def _drain(self):
        """Output still in the pipe; bounded, since a process that dropped our token may
        hold the pipe open."""
        until = time.time() + DRAIN_S
        while self.pipe is not None and time.time() < until:
            self._read_output(POLL_S)
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None


class StopRequest(object):
    """`stop` in the attempt directory: "<time> <grace_s>" written by kill. The deadline for
    SIGKILL is the earliest any request asked for (a kill sent again does not postpone it)."""

    def __init__(self, paths):
        self.paths = paths
        self.seen = None
        self.deadline = None
        self.grace = protocol.DEFAULT_GRACE_S

    def check(self):
        """Read `stop` if it changed; True when it is a new request."""
        try:
            info = os.lstat(self.paths.stop)
        except OSError:
            return False
        key = (info.st_ino, info.st_mtime, info.st_size)
        if key == self.seen:
            return False
        self.seen = key
        asked, grace = time.time(), protocol.DEFAULT_GRACE_S
        try:
            parts = (read_text(self.paths.stop) or "").split()
        except Damaged:
            parts = []
        try:
            if len(parts) >= 2 and 0 <= float(parts[1]) <= 3600:
                grace = float(parts[1])
            if parts and asked - 3600 <= float(parts[0]) <= asked:
                asked = float(parts[0])
        except ValueError:
            pass
        self.now(grace, asked)
        return True

    def now(self, grace, asked=None):
        asked = time.time() if asked is None else asked
        if self.deadline is None or asked + grace < self.deadline:
            self.deadline, self.grace = asked + grace, grace


def start_job(paths, log, output, token):
    """(the job's process, its spec), started from spec.json with its output on the pipe
    `output`; (None, None) and the reason in the log when it cannot start."""
    spec = None
    try:
        spec = read_json(paths.spec, SPEC_FILE_BYTES)
        if not isinstance(spec, dict):
            raise Damaged("spec.json is not an object")
        make_dirs(spec["checkpoint_dir"])
        job = subprocess.Popen(
            spec["argv"],
            cwd=spec["workdir"],
            env=job_env(spec, paths, token),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return job, spec
    except (Damaged, OSError, ValueError, TypeError, KeyError) as exc:
        argv = spec.get("argv") if isinstance(spec, dict) else None
        os.write(
            log, ("sheetrunner: could not start %r: %s\n" % (argv, exc)).encode("utf-8", "replace")
        )
        return None, None


# -- output.log: the first LOG_HEAD_BYTES and a rolling tail, never over the cap --------------


class CappedLog(object):
    """The job's output as the supervisor writes it into output.log. Once the file would
    pass `cap`, it is rewritten (temp file, rename) as its first `head` bytes, one marker
    line saying how many bytes were dropped, and the newest output, starting at a line; the
    tail is cut to half the room each time, so rewrites stay rare. The marker and where it
    lies are also in output.log.cut (JSON), so readers can tell a position in the job's
    output from one in the file."""

    def __init__(self, paths, fd, cap):
        self.paths, self.fd, self.cap = paths, fd, cap
        self.head = min(protocol.LOG_HEAD_BYTES, cap // 4)
        self.size = os.fstat(fd).st_size
        self.dropped = 0
        self.marker = b""

    def write(self, data):
        if self.size + len(data) > self.cap:
            try:
                self._cut(data)
                return
            except OSError:
                pass  # no room for the copy: go on appending rather than lose the output
        _write_all(self.fd, data)
        self.size += len(data)

    def close(self):
        os.close(self.fd)

    def _cut(self, data):
        tail_at = self.head + len(self.marker)  # where the tail starts in the file now
        room = self.cap - self.head - MARKER_ROOM
        keep = max(1, room // 2)
        existing = self.size - tail_at
        drop = max(0, existing + len(data) - keep)
        drop += _to_next_line(self._tail_bytes(tail_at, existing, data, drop))
        drop = min(drop, existing + len(data))
        old = self.fd
        head = _pread_all(old, 0, self.head)
        self.dropped += drop
        marker = b"" if head.endswith(b"\n") else b"\n"
        marker += (
            "[sheetrunner: %d bytes of output dropped here; output.log keeps the first %s and "
            "the newest output, at most %s in all]\n"
            % (self.dropped, _kib(self.head), _kib(self.cap))
        ).encode()
        tmp = "%s.tmp.%d.%s" % (self.paths.log, os.getpid(), protocol.random_base36(6))
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
        fd = os.open(tmp, flags, protocol.FILE_MODE)
        try:
            os.fchmod(fd, protocol.FILE_MODE)
            _write_all(fd, head + marker)
            position = tail_at + min(drop, existing)
            while position < self.size:
                chunk = _pread_all(old, position, min(1 << 20, self.size - position))
                if not chunk:
                    break
                _write_all(fd, chunk)
                position += len(chunk)
            _write_all(fd, data[max(0, drop - existing) :])
            os.replace(tmp, self.paths.log)
        except BaseException:
            os.close(fd)
            _unlink(tmp)
            raise
        self.fd, self.marker = fd, marker
        self.size = os.fstat(fd).st_size
        os.close(old)
        cut = {"head": len(head), "dropped": self.dropped, "marker": marker.decode()}
        try:
            write_atomic(self.paths.log_cut, json.dumps(cut))
        except OSError:
            pass

    def _tail_bytes(self, tail_at, existing, data, drop):
        """Up to one report line of what would be kept, from `drop` on: where the first
        whole line starts."""
        want = protocol.REPORT_LINE_BYTES + 1
        if drop < existing:
            part = _pread_all(self.fd, tail_at + drop, min(want, existing - drop))
            return part + data[: max(0, want - len(part))]
        return data[drop - existing : drop - existing + want]


MARKER_ROOM = 512  # the marker line, at most


def _to_next_line(data):
    """Bytes up to and including the first newline, or 0 when a line starts right there
    or none ends within `data`."""
    newline = data.find(b"\n")
    return 0 if newline < 0 else newline + 1


def _pread_all(fd, offset, size):
    parts = []
    while size > 0:
        part = os.pread(fd, min(size, 1 << 20), offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def log_cut(paths, fd):
    """(head, dropped, marker length) of a log the supervisor has cut, from output.log.cut,
    checked against the log open at `fd`; None when the log was never cut (or the two
    disagree for a moment, while a cut is being made)."""
    try:
        cut = read_json(paths.log_cut)
    except Damaged:
        return None
    if not isinstance(cut, dict):
        return None
    head, dropped, marker = cut.get("head"), cut.get("dropped"), cut.get("marker")
    if not (_count(head) and _count(dropped) and isinstance(marker, str)):
        return None
    data = marker.encode("utf-8", "replace")
    try:
        if _pread_all(fd, head, len(data)) != data:
            return None
    except OSError:
        return None
    return head, dropped, len(data)


def named_attempt(args, count):
    """The attempt named by NS_ROOT HOST RUN_ID ATTEMPT, checked; `count` arguments needed."""
    ns_root, host = where(args, count)
    return attempt_paths(ns_root, host, args[2], args[3])


def kill(args):
    """Ask an attempt to stop and return at once: `stop` (time and grace) is written, SIGTERM
    and SIGCONT go to the job's process group and to every process carrying the attempt's
    token. The supervisor sends SIGKILL once the grace has passed; when the supervisor is
    gone, a detached reaper does."""
    paths = named_attempt(args, 4)
    grace_s = _seconds(args[4]) if len(args) > 4 else protocol.DEFAULT_GRACE_S
    if not os.path.isdir(paths.dir):
        print(json.dumps({"killed": False, "state": "missing"}))
        return
    try:
        write_atomic(paths.stop, "%.3f %s" % (time.time(), grace_s))
    except OSError:
        pass  # a `stop` a job made a directory: the signals below still go out
    boot = boot_id()
    state, _, _, reason = attempt_state(paths, boot)
    record = pid_record(paths, [])
    signalled = 0
    if record is not None and record[2] == boot:
        signalled += signal_group(record[0], record[1], STOP_SIGNALS)
    token = read_token(paths)
    signalled += send(attempt_processes(token), STOP_SIGNALS) if token else 0
    if signalled and not _supervisor_alive(paths, record, boot):
        detach(["reap", paths.dir, str(grace_s)])
    answer = {"killed": bool(signalled) or state in ("running", "starting"), "state": state}
    if reason:
        answer["reason"] = reason
    print(json.dumps(answer))


def _supervisor_alive(paths, record, boot):
    if record is not None and record[3]:
        return record[2] == boot and alive(record[3], record[4])
    sup = supervisor_record(paths, [])
    return sup is not None and sup[2] == boot and alive(sup[0], sup[1])


def reap(args):
    """(Detached, when the supervisor is gone.) SIGKILL what is left of an attempt once the
    grace has passed since its stop request, then end."""
    if len(args) != 2:
        raise Refused("expected ATTEMPT_DIR GRACE_S")
    paths = supervised_paths(args[:1])
    stop = StopRequest(paths)
    stop.now(_seconds(args[1]))
    stop.check()
    record = pid_record(paths, [])
    pid, ticks = (record[0], record[1]) if record and record[2] == boot_id() else (None, None)
    token = read_token(paths)
    while True:
        left = attempt_processes(token, pid if same_process(pid, ticks) else None)
        if not left:
            return
        stop.check()
        if time.time() >= stop.deadline:
            signal_group(pid, ticks, (signal.SIGKILL,))
            send(left, (signal.SIGKILL,))
            return
        time.sleep(POLL_S)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise Refused("not a number of seconds: %r" % text) from None
    if not 0 <= value <= 3600:
        raise Refused("grace period out of range: %r" % text)
    return value


def tail(args):
    """The last N bytes of a log, or with "+N" the bytes from offset N on (at most 1 MiB).
    A log that is a symlink or not a regular file gives nothing."""
    paths = named_attempt(args, 5)
    size = args[4]
    number = _whole(size[1:] if size.startswith("+") else size)
    if number is None or number < 0:
        raise Refused("not a size or +offset: %r" % size)
    if not size.startswith("+"):
        sys.stdout.buffer.write(tail_bytes(paths.log, min(number, 64 << 20)))
        return
    try:
        fd = open_read(paths.log)
    except Damaged:
        return
    if fd is None:
        return
    try:
        os.lseek(fd, number, os.SEEK_SET)
        sys.stdout.buffer.write(read_fd(fd, 1 << 20))
    except OSError:
        pass
    finally:
        os.close(fd)


def history(args):
    """Every report of an attempt (thinned evenly to at most N), as one JSON list: for plots.
    Reports are read like the probe reads them: lines over the limit skipped, each report
    bounded."""
    paths = named_attempt(args, 5)
    most = _whole(args[4])
    if most is None:
        raise Refused("not a count: %r" % args[4])
    records = []
    for source, prefix in ((paths.metrics, b""), (paths.log, METRIC_PREFIX_BYTES)):
        try:
            fd = open_read(source)
        except Damaged:
            continue
        if fd is None:
            continue
        try:
            records = [r for r in (parse_report(line, prefix)[0] for line in file_lines(fd)) if r]
        finally:
            os.close(fd)
        if records:
            break
    if len(records) > most > 0:
        records = [records[i * len(records) // most] for i in range(most)]
    print(json.dumps(records))


def file_lines(fd, block=1 << 20):
    """The lines of a file within the report line limit; longer ones are skipped without
    ever being held whole."""
    summary = {"offset": 0, "skipping": False, "skipped": dict.fromkeys(SKIP_KEYS, 0)}
    while True:
        os.lseek(fd, summary["offset"], os.SEEK_SET)
        chunk = read_fd(fd, block)
        before = summary["offset"]
        for line in _new_lines(summary, chunk, b""):
            yield line
        if len(chunk) < block:
            rest = chunk[summary["offset"] - before :]
            if rest and len(rest) <= protocol.REPORT_LINE_BYTES and not summary["skipping"]:
                yield rest  # a last line without its newline
            return


# -- resident: one long-lived process answering requests ---------------------------------------
#
# `serve` reads one JSON request per line on stdin, {"id", "argv", "stdin"}, runs the same
# command function a `python3 agent.pyz ARGV` exec would, and writes one JSON answer per line,
# {"id", "exit", "out" (or "out_b64" for bytes that are not UTF-8), "err"}, each after an
# {"id", "ack"} line sent on receipt (the daemon bounds that wait like opening a channel,
# so a frozen host is told apart from a slow command). Its first line
# names this file (agent-<version>.pyz), so the daemon knows which code answers. It ends at
# EOF (the channel closed); a request taking over SERVE_REQUEST_LIMIT_S ends it (SIGALRM), so
# a hung request never leaves a process behind once the daemon gave up on it.

SERVE_COMMANDS = protocol.RESIDENT_COMMANDS
SERVE_REQUEST_LIMIT_S = 300


def serve(args):
    if args:
        raise Refused("serve takes no arguments")
    RESIDENT.append(True)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    _answer(answers, {"hello": os.path.basename(sys.argv[0]), "pid": os.getpid()})
    while True:
        line = requests.readline(REQUEST_BYTES * 2)
        if not line:
            return
        try:
            request = json.loads(line.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            _answer(answers, {"id": None, "exit": REFUSED_EXIT, "err": "refused: not JSON\n"})
            continue
        _answer(answers, {"id": request.get("id"), "ack": True})  # alive: now the command
        signal.alarm(SERVE_REQUEST_LIMIT_S)
        try:
            answer = _serve_one(request)
        finally:
            signal.alarm(0)
        answer["id"] = request.get("id")
        _answer(answers, answer)


def _serve_one(request):
    """One command, as an exec of it would have run: its stdin, stdout, stderr, exit status."""
    argv, data = request.get("argv"), request.get("stdin") or ""
    if not isinstance(argv, list) or not argv or argv[0] not in SERVE_COMMANDS:
        return {"exit": REFUSED_EXIT, "err": "refused: not a command: %r\n" % (argv,)}
    if not all(isinstance(a, str) for a in argv) or not isinstance(data, str):
        return {"exit": REFUSED_EXIT, "err": "refused: argv and stdin must be text\n"}
    saved = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.StringIO()
    sys.stdin = io.TextIOWrapper(io.BytesIO(data.encode("utf-8")), encoding="utf-8")
    text_out = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stdout, sys.stderr = text_out, err
    code = 0
    try:
        main(["agent"] + argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            err.write("%s\n" % exc.code)
    except Exception:  # one request failing must not end the process serving the others
        import traceback

        err.write(traceback.format_exc())
        code = 1
    finally:
        text_out.flush()
        body = out.getvalue()  # before the wrapper goes: it closes what it wraps
        sys.stdin, sys.stdout, sys.stderr = saved
    answer = {"exit": code, "err": err.getvalue()[-4000:]}
    try:
        answer["out"] = body.decode("utf-8")
    except UnicodeDecodeError:
        answer["out_b64"] = base64.b64encode(body).decode("ascii")
    return answer


def _answer(stream, answer):
    stream.write(json.dumps(answer).encode("utf-8") + b"\n")
    stream.flush()


if __name__ == "__main__":
    main(sys.argv)
