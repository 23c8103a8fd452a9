"""The end of every finished attempt's log, kept in the state directory.

Logs live on the host that ran the attempt; a preempted VM takes them with it.
When an attempt ends (succeeded, failed, crashed, stopped) the daemon copies
the last ARCHIVED_BYTES of its log here, once, so `sheetrunner logs` can still
show why it ended after the host is gone.
"""

from __future__ import annotations

from pathlib import Path

from .atomic import write_atomic

ARCHIVED_BYTES = 256 * 1024


class LogArchive:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / "logs"

    def path(self, run_id: str, attempt: int) -> Path:
        return self.root / run_id / f"{attempt}.log"

    def save(self, run_id: str, attempt: int, data: bytes) -> None:
        target = self.path(run_id, attempt)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data[-ARCHIVED_BYTES:])

    def read(self, run_id: str, attempt: int) -> bytes | None:
        try:
            return self.path(run_id, attempt).read_bytes()
        except OSError:
            return None
