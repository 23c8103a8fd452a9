"""The host contract: formats and file names shared by the daemon, the agent and jobs.

Standard library only, Python 3.6+ syntax: this module ships to hosts inside
the agent. It is the one place that knows what a run id and a namespace look
like, where an attempt's files lie, and which environment names a job sees.
Everything that reaches a host is checked against these formats there too
(defence in depth): an id cell typed in the sheet is data, never a path.
"""

import os
import re

# A run id: the experiment hash's first 8 hex digits, a dash, a random base-36 tail
# (new ids have 6 characters). Unique across sheets, daemons and time; never a counter.
RUN_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-z]{1,12}$")
# A sheet's namespace: random base-36, created once and kept in the sheet's hidden tab.
NAMESPACE_RE = re.compile(r"^[0-9a-z]{8,32}$")
# A host's name from the config: a single path component on the host, never "." or "..".
HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# An attempt number as text: plain ASCII digits (str.isdigit also accepts "²").
ATTEMPT_RE = re.compile(r"^[0-9]{1,9}$")
BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
RUN_ID_TAIL = 6
NAMESPACE_LENGTH = 12


def _full(pattern, text):
    """Whole-string match: `$` alone would let a trailing newline through."""
    return isinstance(text, str) and pattern.match(text) is not None and "\n" not in text


def is_run_id(text):
    return _full(RUN_ID_RE, text)


def is_namespace(text):
    return _full(NAMESPACE_RE, text)


def is_host_name(text):
    return _full(HOST_NAME_RE, text)


def is_attempt(value):
    """An attempt number: a positive whole number (text of ASCII digits, or an int)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 1 <= value < 10**9
    return _full(ATTEMPT_RE, value) and int(value) >= 1


def random_base36(length):
    return "".join(BASE36[b % 36] for b in os.urandom(length))


def new_run_id(key):
    """A fresh run id for an experiment hash."""
    return "%s-%s" % (key[:8], random_base36(RUN_ID_TAIL))


def new_namespace():
    return random_base36(NAMESPACE_LENGTH)


class AttemptPaths(object):
    """Where one attempt's files lie. `ns_root` is `<root>/<namespace>`; each host keeps its
    attempts under its own name there, so hosts sharing a home directory (NFS) never
    judge each other's processes, while checkpoints are per run, shared by hosts that
    share the filesystem:

        <root>/<namespace>/hosts/<host>/runs/<run-id>/<attempt>/   spec.json, pid, output.log, ...
        <root>/<namespace>/checkpoints/<run-id>/                    the run's resume point
    """

    def __init__(self, ns_root, host, run_id, attempt):
        if not is_run_id(run_id) or not is_attempt(attempt):
            raise ValueError("not a run id and attempt: %r %r" % (run_id, attempt))
        self.run_dir = os.path.join(runs_dir(ns_root, host), run_id)
        self.dir = os.path.join(self.run_dir, str(int(attempt)))
        self.checkpoints = os.path.join(ns_root, "checkpoints", run_id)

    def file(self, name):
        return os.path.join(self.dir, name)

    @property
    def spec(self):
        return self.file("spec.json")

    @property
    def log(self):
        return self.file("output.log")

    @property
    def pid(self):
        return self.file("pid")

    @property
    def exit_code(self):
        return self.file("exit_code")

    @property
    def heartbeat(self):
        return self.file("heartbeat")

    @property
    def metrics(self):
        return self.file("metrics.jsonl")

    @property
    def summary(self):
        return self.file("metrics.summary.json")

    @property
    def stop(self):
        return self.file("stop")

    @property
    def lost(self):
        return self.file("lost")

    @property
    def token(self):
        return self.file("token")

    @property
    def supervisor(self):
        return self.file("supervisor")

    @property
    def leftovers(self):
        return self.file("leftovers")

    @property
    def log_cut(self):
        return self.file("output.log.cut")


def namespace_root(root, namespace):
    """`<root>/<namespace>`: everything of one sheet on a host lies below it."""
    if not is_namespace(namespace):
        raise ValueError("not a namespace: %r" % (namespace,))
    return "%s/%s" % (root.rstrip("/"), namespace)


def runs_dir(ns_root, host):
    """Every attempt of this host under a namespace."""
    return os.path.join(ns_root, "hosts", host, "runs")


# Limits on what a job writes into its attempt directory, shared by the agent (which skips
# or cuts what is over them, and says so in the probe) and sheetrunner.job (which trims a
# report before writing it, so a job never loses a report without a word in its log).
REPORT_LINE_BYTES = 65536  # one metrics report (a metrics.jsonl line, without its newline)
MAX_REPORT_KEYS = 200  # names in one report (step and time included); the rest are cut
METRIC_NAME_CHARS = 128  # a longer metric name is left out
# Modes of everything sheetrunner creates on a host, whatever the umask: only this user.
DIR_MODE = 0o700
FILE_MODE = 0o600


# The environment a job sees (docs/remote-layout.md).
ENV_RUN_ID = "SHEETRUNNER_RUN_ID"
ENV_ATTEMPT = "SHEETRUNNER_ATTEMPT"
ENV_RUN_DIR = "SHEETRUNNER_RUN_DIR"
ENV_CHECKPOINT_DIR = "SHEETRUNNER_CHECKPOINT_DIR"
ENV_METRICS_FILE = "SHEETRUNNER_METRICS_FILE"
ENV_HEARTBEAT_FILE = "SHEETRUNNER_HEARTBEAT_FILE"
ENV_ACCELERATORS = "SHEETRUNNER_ACCELERATORS"
ENV_KEEP_CHECKPOINTS = "SHEETRUNNER_KEEP_CHECKPOINTS"
ENV_BEST_METRIC = "SHEETRUNNER_BEST_METRIC"
ENV_BEST_MODE = "SHEETRUNNER_BEST_MODE"
# A run across hosts (sheetrunner/gang.py): every node gets these, under sheetrunner's names and
# under the names torch.distributed / torchrun and jax.distributed read.
ENV_NODE_RANK = "SHEETRUNNER_NODE_RANK"  # 0 .. num_nodes-1; rank 0 reports metrics
ENV_NUM_NODES = "SHEETRUNNER_NUM_NODES"
ENV_COORDINATOR = "SHEETRUNNER_COORDINATOR"  # "address:port" of rank 0's host
TORCH_MASTER_ADDR = "MASTER_ADDR"
TORCH_MASTER_PORT = "MASTER_PORT"
TORCH_NODE_RANK = "NODE_RANK"
TORCH_WORLD_SIZE = "WORLD_SIZE"  # the number of nodes (one process per node), see docs/pool.md
JAX_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
JAX_PROCESS_ID = "JAX_PROCESS_ID"
JAX_NUM_PROCESSES = "JAX_NUM_PROCESSES"
# A random token every process of an attempt inherits (set by the supervisor): the agent finds
# the attempt's processes by it, including those that left the job's process group or session.
ENV_ATTEMPT_TOKEN = "SHEETRUNNER_ATTEMPT_TOKEN"
TOKEN_RE = re.compile(r"^[0-9a-z]{32}$")
TOKEN_LENGTH = 32

# The agent commands a resident agent (`agent.pyz serve`) answers; every other command
# (code, setup, disk, Slurm) runs as an exec of its own.
RESIDENT_COMMANDS = ("probe", "facts", "programs", "launch", "kill", "tail", "history")


def is_token(text):
    return _full(TOKEN_RE, text)


# In the attempt directory: written by a job that handles SIGUSR1 (sheetrunner.job's
# on_time_limit), so the supervisor passes on a cluster's warning before the time limit.
USR1_MARKER = "wants_usr1"

# output.log: the supervisor keeps the job's first LOG_HEAD_BYTES and a rolling tail, so that
# the file never exceeds the spec's max_log_bytes (default below).
DEFAULT_MAX_LOG_BYTES = 50 << 20
MIN_MAX_LOG_BYTES = 64 << 10
LOG_HEAD_BYTES = 1 << 20
# Seconds between SIGTERM and SIGKILL when nothing else says (a kill names its own).
DEFAULT_GRACE_S = 10.0


# Code synced to hosts (`[jobs.NAME] sync`): one directory per content hash, built whole in a
# temporary directory and renamed into place, so a half-uploaded version is never used; the
# files' bytes are kept once per host in an object store by their own hash, so a new version
# uploads only the files the host lacks. Setups (`setup = [argv]`) run per host, per key (a
# hash of the code version, the argv lists and the environment):
#
#     <root>/<namespace>/code/<content-hash>/                 the tree, the job's working directory
#     <root>/<namespace>/code/objects/<blob-hash>             file contents by hash
#     <root>/<namespace>/code/manifests/<content-hash>.json   which blobs a version uses
#     <root>/<namespace>/hosts/<host>/setup/<key>/            output.log, exit_code, pid
CODE_HASH_RE = re.compile(r"^[0-9a-f]{16,64}$")


def is_code_hash(text):
    """A content hash of a code version, a file's blob, or a setup key."""
    return _full(CODE_HASH_RE, text)


def code_root(ns_root):
    return os.path.join(ns_root, "code")


def code_dir(ns_root, content_hash):
    """The directory holding one code version: the working directory of its runs."""
    if not is_code_hash(content_hash):
        raise ValueError("not a code hash: %r" % (content_hash,))
    return os.path.join(code_root(ns_root), content_hash)


def code_objects(ns_root):
    return os.path.join(code_root(ns_root), "objects")


def code_manifests(ns_root):
    return os.path.join(code_root(ns_root), "manifests")


def setup_dir(ns_root, host, key):
    """One setup's files on one host: output.log, exit_code, pid."""
    if not is_code_hash(key):
        raise ValueError("not a setup key: %r" % (key,))
    return os.path.join(ns_root, "hosts", host, "setup", key)
