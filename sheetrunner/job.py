"""The job's side of sheetrunner: where am I, report metrics, keep checkpoints.

A job imports this and nothing else from sheetrunner. It stays cheap to import
(standard library only; torch is imported inside the checkpoint functions) and
self-contained, so it works on a host where sheetrunner is not installed.
Everything comes from the `SHEETRUNNER_*` environment variables the launcher
sets (docs/remote-layout.md); when a job is run by hand they are absent and
everything falls back to `./sheetrunner-local/`, so the same script runs
unchanged on a laptop. docs/jobs.md is the user's guide.

    from sheetrunner import job

    if job.is_done():
        return 0
    resumed = job.latest()                     # (step, state) or None
    ...
    job.report(step, loss=loss)                # buffered; touches the heartbeat
    job.save(state, step, metrics={"acc": acc})
    job.mark_done()
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .remote.protocol import (
    ENV_ACCELERATORS,
    ENV_ATTEMPT,
    ENV_BEST_METRIC,
    ENV_BEST_MODE,
    ENV_CHECKPOINT_DIR,
    ENV_HEARTBEAT_FILE,
    ENV_KEEP_CHECKPOINTS,
    ENV_METRICS_FILE,
    ENV_RUN_DIR,
    ENV_RUN_ID,
    MAX_REPORT_KEYS,
    METRIC_NAME_CHARS,
    REPORT_LINE_BYTES,
    USR1_MARKER,
)

LOCAL_DIR = "sheetrunner-local"
LOG_PREFIX = "SHEETRUNNER "
FLUSH_INTERVAL_S = 1.0
DONE_FILE = "DONE"
INDEX_FILE = "index.json"
_CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
_TMP_PREFIX = ".tmp-"
TRIM_WARNINGS = (
    3  # trimmed reports warned about on stderr; a job trimming every step says it 3 times
)


# --- where am I -------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What the launcher told this attempt, with local defaults filled in."""

    run_id: str
    attempt: int
    accelerators: list[str]
    run_dir: Path
    checkpoint_dir: Path
    metrics_file: Path
    heartbeat_file: Path
    keep_checkpoints: int
    best_metric: str | None
    best_mode: str


def context(environ: Mapping[str, str] | None = None) -> Context:
    """Read the environment on every call, so a test or a wrapper can change it."""
    env = os.environ if environ is None else environ
    run_dir = Path(env.get(ENV_RUN_DIR) or Path.cwd() / LOCAL_DIR)
    return Context(
        run_id=env.get(ENV_RUN_ID) or "local",
        attempt=_int_env(env, ENV_ATTEMPT, 1, minimum=1),
        accelerators=_split_list(env.get(ENV_ACCELERATORS, "")),
        run_dir=run_dir,
        checkpoint_dir=Path(env.get(ENV_CHECKPOINT_DIR) or run_dir / "checkpoints"),
        metrics_file=Path(env.get(ENV_METRICS_FILE) or run_dir / "metrics.jsonl"),
        heartbeat_file=Path(env.get(ENV_HEARTBEAT_FILE) or run_dir / "heartbeat"),
        keep_checkpoints=_keep_checkpoints(env),
        best_metric=env.get(ENV_BEST_METRIC) or None,
        best_mode=_best_mode(env.get(ENV_BEST_MODE) or "max"),
    )


def _int_env(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    """Fail at the first use with the variable's name, not deep inside a save."""
    raw = env.get(name) or str(default)
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _keep_checkpoints(env: Mapping[str, str]) -> int:
    """0 (the config allows it) still keeps the newest: it is the resume point."""
    return max(1, _int_env(env, ENV_KEEP_CHECKPOINTS, 2, minimum=0))


def _best_mode(raw: str) -> str:
    if raw not in ("max", "min"):
        raise ValueError(f"{ENV_BEST_MODE}={raw!r}: expected 'max' or 'min'")
    return raw


def _split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def run_id() -> str:
    return context().run_id


def attempt() -> int:
    return context().attempt


def accelerators() -> list[str]:
    """Empty means the row asked for CPU only (or the job was run by hand)."""
    return context().accelerators


def run_dir() -> Path:
    return context().run_dir


def checkpoint_dir() -> Path:
    return context().checkpoint_dir


# --- metrics and heartbeat ----------------------------------------------------


def _jsonable(name: str, value: Any) -> Any:
    """Turn numpy and torch scalars into plain numbers before they reach json."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        return value.item() if hasattr(value, "item") else float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"metric {name!r}: {type(value).__name__} is not a number") from None


def _record(step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    if "time" in metrics:
        raise ValueError("'time' is set by report(); give the metric another name")
    clean = {name: _jsonable(name, value) for name, value in metrics.items()}
    return {"step": int(step), "time": time.time(), **clean}


def _fit_line(record: dict[str, Any]) -> tuple[str, list[str]]:
    """The report's JSON line within what the agent reads (REPORT_LINE_BYTES, at most
    MAX_REPORT_KEYS names of at most METRIC_NAME_CHARS), and what had to be left out. The
    agent skips a longer line and cuts a wider report; doing it here means the job's log
    says so (a report the agent skipped would vanish without a word)."""
    line = json.dumps(record)
    if (
        len(line.encode()) <= REPORT_LINE_BYTES
        and len(record) <= MAX_REPORT_KEYS
        and all(len(name) <= METRIC_NAME_CHARS for name in record)
    ):
        return line, []
    kept: dict = {}
    dropped: list = []
    size = 2  # the braces
    for name, value in record.items():
        item = len(json.dumps({name: value}).encode()) - 2 + (2 if kept else 0)
        if (
            len(name) > METRIC_NAME_CHARS
            or len(kept) >= MAX_REPORT_KEYS
            or size + item > REPORT_LINE_BYTES
        ):
            dropped.append(name)
            continue
        kept[name] = value
        size += item
    return json.dumps(kept), dropped


def _warn_trimmed(step: int, dropped: list[str]) -> None:
    names = ", ".join(repr(n[:40]) for n in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
    sys.stderr.write(
        f"sheetrunner.job: report at step {step}: {len(dropped)} metric(s) left out ({names}); "
        f"a report holds at most {MAX_REPORT_KEYS} names of at most {METRIC_NAME_CHARS} "
        f"characters in {REPORT_LINE_BYTES // 1024} KiB\n"
    )
    sys.stderr.flush()


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a"):
        pass
    os.utime(path, None)


class Reporter:
    """Buffers report lines so calling it every step costs a list append.

    The buffer is written at most every `flush_interval_s`: by the report that
    finds the interval passed, by a background timer (so a last report before
    a long quiet spell still lands), by flush() and at exit. Each write also
    touches the heartbeat, which therefore stays fresh while reports come in.
    """

    def __init__(
        self,
        metrics_file: Path,
        heartbeat_file: Path,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics_file = Path(metrics_file)
        self.heartbeat_file = Path(heartbeat_file)
        self.flush_interval_s = flush_interval_s
        self._clock = clock
        self._lines: list[str] = []
        self._last_flush = -math.inf
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._trimmed = 0
        atexit.register(self.flush)

    def report(self, step: int, **metrics: Any) -> None:
        """Buffer one report; one too big for the agent is trimmed, with a warning on stderr
        (the job's log) the first few times."""
        line, dropped = _fit_line(_record(step, metrics))
        if dropped:
            self._trimmed += 1
            if self._trimmed <= TRIM_WARNINGS:
                _warn_trimmed(step, dropped)
        line += "\n"
        with self._lock:
            self._lines.append(line)
            if self._clock() - self._last_flush >= self.flush_interval_s:
                self._flush_locked()
            else:
                self._arm_timer()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def heartbeat(self) -> None:
        _touch(self.heartbeat_file)

    def _flush_locked(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child (e.g. a data loader worker) must not write the parent's lines
        self._last_flush = self._clock()
        if self._lines:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_file, "a", encoding="utf-8") as f:
                f.write("".join(self._lines))
            self._lines.clear()
        _touch(self.heartbeat_file)

    def _arm_timer(self) -> None:
        if self._timer is not None and self._timer.is_alive():
            return
        self._timer = threading.Timer(self.flush_interval_s, self.flush)
        self._timer.daemon = True
        self._timer.start()


_reporter: Reporter | None = None
_reporter_lock = threading.Lock()


def _default_reporter() -> Reporter:
    global _reporter
    with _reporter_lock:
        if _reporter is None:
            ctx = context()
            _reporter = Reporter(ctx.metrics_file, ctx.heartbeat_file)
        return _reporter


def report(step: int, **metrics: Any) -> None:
    """Add `{"step", "time", **metrics}` to metrics.jsonl (buffered); keep the heartbeat fresh."""
    _default_reporter().report(step, **metrics)


def flush() -> None:
    """Write buffered reports now: call it before os._exit or a long silent phase."""
    _default_reporter().flush()


def heartbeat() -> None:
    """Say "still making progress" during a long stretch without reports."""
    _default_reporter().heartbeat()


def log_line(step: int, **metrics: Any) -> str:
    """The line a job that does not write metrics.jsonl prints instead; sheetrunner reads it."""
    clean = {name: _jsonable(name, value) for name, value in metrics.items()}
    return LOG_PREFIX + json.dumps({"step": int(step), **clean})


# --- checkpoints ----------------------------------------------------------------


def checkpoint_path(step: int, directory: Path | None = None) -> Path:
    return (directory or checkpoint_dir()) / f"ckpt-{int(step):08d}.pt"


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable, not only the file's bytes."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """A reader (or a restarted attempt) sees the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as usual
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_json_atomic(path: Path, data: Any) -> None:
    payload = json.dumps(data, indent=1).encode()
    _write_atomic(path, lambda f: f.write(payload))


def _steps_on_disk(directory: Path) -> list[int]:
    """The files, not the index, are the truth: the index may predate a crash."""
    if not directory.is_dir():
        return []
    matches = (_CKPT_RE.match(p.name) for p in directory.iterdir())
    return sorted(int(m.group(1)) for m in matches if m)


def _read_index(directory: Path) -> dict[int, dict[str, Any]]:
    try:
        data = json.loads((directory / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {int(e["step"]): e.get("metrics") or {} for e in data.get("checkpoints", [])}


def _score(metrics: dict[str, Any], ctx: Context) -> float | None:
    value = metrics.get(ctx.best_metric) if ctx.best_metric else None
    if not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value) if ctx.best_mode == "max" else -float(value)


def _best_step(metrics_by_step: dict[int, dict[str, Any]], ctx: Context) -> int | None:
    """The earliest step with the best score; ties keep the one already kept."""
    scored = [
        (score, -step)
        for step, m in metrics_by_step.items()
        if (score := _score(m, ctx)) is not None
    ]
    return -max(scored)[1] if scored else None


def _retain(directory: Path, metrics_by_step: dict[int, dict[str, Any]], ctx: Context) -> None:
    """Keep the newest K and the best; write the index before deleting anything."""
    steps = sorted(metrics_by_step)
    best = _best_step(metrics_by_step, ctx)
    keep = set(steps[-ctx.keep_checkpoints :]) | ({best} if best is not None else set())
    entries = [
        {"step": s, "file": checkpoint_path(s, directory).name, "metrics": metrics_by_step[s]}
        for s in sorted(keep)
    ]
    index = {
        "checkpoints": entries,
        "best_step": best,
        "best_metric": ctx.best_metric,
        "best_mode": ctx.best_mode,
    }
    _write_json_atomic(directory / INDEX_FILE, index)
    for step in set(steps) - keep:
        checkpoint_path(step, directory).unlink(missing_ok=True)
    for stale in directory.glob(_TMP_PREFIX + "*"):
        stale.unlink(missing_ok=True)


def save(state: Any, step: int, metrics: dict[str, Any] | None = None) -> Path:
    """torch.save `state` as ckpt-{step:08d}.pt atomically, then apply the retention rule."""
    import torch

    ctx = context()
    directory = ctx.checkpoint_dir
    path = checkpoint_path(step, directory)
    _write_atomic(path, lambda f: torch.save(state, f))
    known = _read_index(directory)
    metrics_by_step = {s: known.get(s, {}) for s in _steps_on_disk(directory)}
    metrics_by_step[int(step)] = {k: _jsonable(k, v) for k, v in (metrics or {}).items()}
    _retain(directory, metrics_by_step, ctx)
    return path


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Load a checkpoint this run wrote (full unpickling: the run's own files are trusted)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def latest() -> tuple[int, Any] | None:
    """(step, state) of the newest checkpoint: where a restarted attempt picks up."""
    directory = checkpoint_dir()
    steps = _steps_on_disk(directory)
    if not steps:
        return None
    return steps[-1], load(checkpoint_path(steps[-1], directory))


def mark_done(**info: Any) -> None:
    """Record that the run finished, so a later attempt returns at once instead of training."""
    if _reporter is not None:
        _reporter.flush()
    record = {"time": time.time(), **{k: _jsonable(k, v) for k, v in info.items()}}
    _write_json_atomic(checkpoint_dir() / DONE_FILE, record)


def is_done() -> bool:
    return (checkpoint_dir() / DONE_FILE).exists()


def on_time_limit(callback: Callable[[], None]) -> None:
    """Call `callback` when the run's time limit or a preemption is near: a Slurm cluster
    sends SIGUSR1 `signal_lead` seconds before (sbatch --signal=B:USR1@lead), and the
    supervisor passes it on only to a job that asked here, since SIGUSR1 would otherwise
    end the job. The callback runs in the main thread, between two Python statements:
    save a checkpoint there; the attempt is then ended by the limit and the next one
    resumes from it. Elsewhere (SSH hosts, by hand) it is simply never called."""
    import signal

    signal.signal(signal.SIGUSR1, lambda _sig, _frame: callback())
    directory = os.environ.get(ENV_RUN_DIR)
    if directory and Path(directory).is_dir():
        _touch(Path(directory) / USR1_MARKER)
