"""`sheetrunner doctor` on this machine: what it checks and that it says each thing once."""

from __future__ import annotations

from helpers import HEADER, local_config, write_workbook

from sheetrunner.config import HostConfig
from sheetrunner.doctor import _accelerators, run_checks


def test_doctor_finds_missing_programs_rows_no_host_takes_and_says_each_once(tmp_path):
    write_workbook(tmp_path / "experiments.xlsx", HEADER,
                   [["fake", 1, 0.01, None, 0], ["fake", 1, 0.01, None, 4], ["fake", 2, 0.01, None, 4]])
    config = local_config(tmp_path, extra='''
        [jobs.broken]
        command = ["{python}", "jobs/not_there.py"]

        [jobs.noprogram]
        command = ["no-such-program-anywhere", "--x"]
    ''')
    checks = list(run_checks(config))
    lines = [(c.subject, c.what, c.detail) for c in checks]
    assert len(lines) == len(set(lines))
    failed = {c.what: c for c in checks if not c.ok}
    assert "jobs/not_there.py" in failed["job broken: program exists"].detail
    assert "no-such-program-anywhere" in failed["job noprogram: program exists"].detail
    assert [c for c in checks if c.what == "job fake: program exists"][0].ok
    assert "needs 4 accelerators" in failed["row 3 can run somewhere"].detail
    assert "row 4 can run somewhere" in failed and "row 2 can run somewhere" not in failed
    assert sum(1 for c in checks if c.what.startswith("row ")) == 2


def test_an_accelerator_count_that_disagrees_with_nvidia_smi_is_a_warning():
    host = HostConfig(name="gpu-a", accelerators=4)
    facts = {"gpus": [{"index": "0"}, {"index": "1"}]}
    check = _accelerators(host, facts)
    assert not check.ok and check.warning and "nvidia-smi shows 2" in check.detail
    assert _accelerators(HostConfig(name="gpu-a", accelerators=2), facts).ok
