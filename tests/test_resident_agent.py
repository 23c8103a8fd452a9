"""The resident agent: one serving process per host, over a real sshd and locally."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.errors import TransportError
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport
from sheetrunner.pool.ssh import SshTransport
from sheetrunner.remote import agent_name

try:
    from tests.sshd import SshdLab, sshd_lab_module  # noqa: F401  (a fixture)
except ImportError:
    from sshd import SshdLab, sshd_lab_module  # noqa: F401

NS = "testns000013"


class CountedRuns:
    """The transport's execs, counted."""

    def __init__(self, transport) -> None:
        self.execs = 0
        real = transport.run

        def run(*args, **kwargs):
            self.execs += 1
            return real(*args, **kwargs)

        transport.run = run


@pytest.fixture(scope="module")
def remote(sshd_lab_module: SshdLab):
    host = sshd_lab_module.add_host("res-a", gpus=2)
    transport = SshTransport(**sshd_lab_module.transport_kwargs(host), connect_timeout_s=5)
    config = HostConfig(name=host.name, root=str(host.root_dir), python=sys.executable)
    agent = HostAgent(config, transport, timeout_s=20, namespace=NS)
    counted = CountedRuns(transport)
    agent.probe(set())  # uploads the agent, by exec
    try:
        yield host, agent, counted
    finally:
        agent.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def test_probes_after_the_first_go_over_one_resident_channel_with_no_exec(remote):
    host, agent, counted = remote
    by_exec = json.loads(agent._exec(agent._where("probe"), b"{}", 20).stdout)
    host.set_gpu_busy(1, pid=777777)
    try:
        execs = counted.execs
        answers = [agent.probe(set()) for _ in range(3)]
    finally:
        host.set_gpu_free(1)
    assert counted.execs == execs  # no SSH exec, no new process per probe
    assert agent.resident.requests >= 3 and agent.resident.pid
    assert answers[-1]["boot_id"] == by_exec["boot_id"]
    gpus = answers[-1]["gpus"]
    assert [g["uuid"] for g in gpus] == host.gpu_uuids
    assert [g["foreign"] for g in gpus] == [False, True]  # read from the one -q -x call
    assert gpus[1]["memory_used_mib"] > gpus[0]["memory_used_mib"]


def test_a_killed_resident_agent_is_replaced_and_the_probe_still_answers(remote):
    _, agent, _ = remote
    agent.probe(set())
    first, starts = agent.resident.pid, agent.resident.starts
    os.kill(first, signal.SIGKILL)
    assert agent.probe(set())["gpus"]  # asked again (by exec) when the process died under it
    agent.probe(set())
    assert agent.resident.starts == starts + 1 and agent.resident.pid != first


def test_a_hung_resident_agent_times_out_and_a_fresh_one_answers_next(remote):
    _, agent, _ = remote
    agent.probe(set())
    hung = agent.resident.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        with pytest.raises(TransportError, match="did not answer in time"):
            agent._call(agent._where("probe"), b"{}", timeout_s=1.5)
        assert agent.probe(set())["gpus"]
        assert agent.resident.pid not in (None, hung)
    finally:
        os.kill(hung, signal.SIGKILL)
        os.kill(hung, signal.SIGCONT)


def test_a_dropped_connection_starts_another_resident_agent(remote):
    _, agent, _ = remote
    agent.probe(set())
    old, starts = agent.resident.pid, agent.resident.starts
    agent.transport.close()
    agent.probe(set())
    agent.probe(set())
    assert agent.resident.starts > starts and agent.resident.pid != old
    deadline = time.monotonic() + 10
    while not _gone(old) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(old)  # its stdin closed with the channel: it ended


def test_the_serving_agent_names_its_version_and_refuses_other_commands(tmp_path):
    config = HostConfig(name="local", local=True, root=str(tmp_path), python=sys.executable)
    agent = HostAgent(config, LocalTransport("local"), namespace=NS)
    agent.facts()  # uploads by exec
    stream = LocalTransport("local").open_stream(agent.argv(["serve"]))
    try:
        deadline = time.monotonic() + 20
        assert json.loads(stream.read_line(deadline))["hello"] == agent_name()
        for request in ({"id": 1, "argv": ["supervise", str(tmp_path)]}, {"id": 2, "argv": "probe"}):
            stream.write(json.dumps(request).encode() + b"\n", deadline)
            assert json.loads(stream.read_line(deadline)) == {"id": request["id"], "ack": True}
            answer = json.loads(stream.read_line(deadline))
            assert answer["id"] == request["id"] and answer["exit"] == 3
        stream.write(b"not json\n", deadline)
        assert json.loads(stream.read_line(deadline))["exit"] == 3
        stream.write(b'{"id": 4, "argv": ["kill", "/x/testns000013", "local", "bad", "1"]}\n', deadline)
        assert json.loads(stream.read_line(deadline))["ack"]
        answer = json.loads(stream.read_line(deadline))
        assert answer["exit"] == 3 and "not a run id" in answer["err"]
    finally:
        stream.close()


def test_bytes_that_are_not_text_come_back_whole_through_the_resident_agent(tmp_path):
    config = HostConfig(name="local", local=True, root=str(tmp_path), python=sys.executable)
    agent = HostAgent(config, LocalTransport("local"), namespace=NS)
    run_id = "abcdef01-abc123"
    log = tmp_path / NS / "hosts" / "local" / "runs" / run_id / "1" / "output.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"ok \xff\xfe caf\xc3\xa9\n")
    assert agent.tail(run_id, 1) == log.read_bytes()  # by exec (the first call)
    assert agent.tail(run_id, 1) == log.read_bytes()  # resident: out_b64
    assert agent.resident.requests == 1
    agent.close()
