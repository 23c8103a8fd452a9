"""How a Slurm job's state and an attempt's own files combine into one observation.

Pure (no IO): the policy of the Slurm adapter (sheetrunner/pool/slurm.py), kept here so
that its table of cases is tested on paper (tests/test_slurm_states.py). The attempt's
files are the truth for how a job ended (its exit code file, written by the supervisor:
Slurm's own exit code is that of the batch step, and accounting is not on every site);
Slurm is the truth for where a job is: queued, running, requeued after a node failure,
cancelled or killed at its time limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import AttemptState

QUEUED_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
RUNNING_STATES = frozenset(
    {
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "STAGE_OUT",
        "SIGNALING",
        "RESIZING",
        "SUSPENDED",
        "STOPPED",
    }
)
# Left to Slurm's requeue (sheetrunner submits with --requeue): shown, not acted on.
REQUEUED_BY_SLURM = frozenset({"NODE_FAIL", "PREEMPTED"})
# What a failed job's message says, beside the exit code.
ENDED_WORDS = {
    "COMPLETED": "Slurm: COMPLETED",
    "FAILED": "Slurm: FAILED",
    "OUT_OF_MEMORY": "Slurm: OUT_OF_MEMORY (the job used more memory than it was given)",
    "TIMEOUT": "Slurm: TIMEOUT (the job's time limit passed)",
    "DEADLINE": "Slurm: DEADLINE (the job's deadline passed)",
    "BOOT_FAIL": "Slurm: BOOT_FAIL (its node failed to boot)",
}


@dataclass(frozen=True)
class SlurmJob:
    """One job as squeue lists it."""

    job_id: str
    state: str  # squeue %T: PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED...
    reason: str = ""  # squeue %r: Resources, Priority, JobHeldAdmin, NonZeroExitCode...


@dataclass(frozen=True)
class Verdict:
    """The attempt as the core should see it."""

    state: AttemptState
    exit_code: int | None
    reason: str = ""
    held: bool = False


def verdict(file_state: AttemptState, exit_code: int | None, job: SlurmJob | None) -> Verdict:
    """One attempt: what its files say (`file_state`, `exit_code`) and what Slurm says."""
    if job is None:
        return _unknown_to_slurm(file_state, exit_code)
    state, reason = job.state.split()[0] if job.state else "", _reason(job.reason)
    if state in QUEUED_STATES:
        return Verdict(AttemptState.QUEUED, None, reason or state, held=_held(job.reason))
    if state in REQUEUED_BY_SLURM:
        return Verdict(AttemptState.QUEUED, None, f"Slurm: {state}; left to Slurm's requeue")
    if state in RUNNING_STATES:
        # Slurm's final word comes next cycle: an exit code on disk while Slurm still says
        # RUNNING may be a previous start's, before a requeue moved it aside.
        return Verdict(AttemptState.RUNNING, None, "suspended" if state == "SUSPENDED" else "")
    if state == "CANCELLED":
        words = f"Slurm: CANCELLED{f' ({reason})' if reason else ''}"
        ended = AttemptState.EXITED if file_state == AttemptState.EXITED else AttemptState.VANISHED
        return Verdict(ended, exit_code, words)
    words = ENDED_WORDS.get(state, f"Slurm: {state}")
    if file_state == AttemptState.EXITED:
        return Verdict(AttemptState.EXITED, exit_code, "" if exit_code == 0 else words)
    return Verdict(AttemptState.VANISHED, None, f"lost: {words}; the job wrote no exit code")


def _unknown_to_slurm(file_state: AttemptState, exit_code: int | None) -> Verdict:
    """Slurm no longer lists the job (finished jobs leave squeue after MinJobAge), or it was
    never queued (a daemon stopped between claiming the directory and sbatch: the core's
    launch timeout judges that)."""
    if file_state in (AttemptState.EXITED, AttemptState.STARTING, AttemptState.MISSING):
        return Verdict(file_state, exit_code)
    return Verdict(
        AttemptState.VANISHED, None, "lost: Slurm no longer knows the job and it wrote no exit code"
    )


def _reason(reason: str) -> str:
    return "" if reason in ("None", "(null)") else reason


def _held(reason: str) -> bool:
    return reason.startswith("JobHeld")


def scheduler_word(job: SlurmJob | None) -> str:
    """The job's state word for the observation ("" when Slurm does not list it)."""
    return job.state.split()[0] if job and job.state else ""
