"""GPUs without a process per probe: NVML through ctypes, else one nvidia-smi call.

No GPU here: NVML is a small stand-in library compiled with gcc from the C below,
with the real function names, signatures and struct layouts (nvml.h) of the calls
the agent makes. What a real driver answers is not verified here (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sheetrunner.config import HostConfig
from sheetrunner.pool.hosts import HostAgent
from sheetrunner.pool.local import LocalTransport
from sheetrunner.remote import agent as remote_agent

NS = "testns000131"

FAKE_NVML_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct nvmlDevice_st { int index; } *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

static struct nvmlDevice_st devices[2] = {{0}, {1}};
static int name_calls = 0;

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : fallback;
}
static int lost(nvmlDevice_t h) { return env_int("FAKE_NVML_LOST", -1) == h->index; }

int fake_nvml_name_calls(void) { return name_calls; }
int nvmlInit_v2(void) { return env_int("FAKE_NVML_INIT_RC", 0); }
int nvmlShutdown(void) { return 0; }
const char *nvmlErrorString(int rc) {
    return rc == 15 ? "GPU is lost" : rc == 7 ? "Insufficient Size" : "Unknown Error";
}
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = 2; return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *h) {
    if (i > 1) return 2;
    *h = &devices[i];
    return 0;
}
int nvmlDeviceGetName(nvmlDevice_t h, char *buf, unsigned int len) {
    name_calls++;
    snprintf(buf, len, "Fake H100 %d", h->index);
    return 0;
}
int nvmlDeviceGetUUID(nvmlDevice_t h, char *buf, unsigned int len) {
    snprintf(buf, len, "GPU-fake-%d", h->index);
    return 0;
}
int nvmlDeviceGetMemoryInfo(nvmlDevice_t h, nvmlMemory_t *m) {
    if (lost(h)) return 15;
    m->total = 81559ULL << 20;
    m->used = (h->index ? 30000ULL : 3ULL) << 20;
    m->free = m->total - m->used;
    return 0;
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t h, nvmlUtilization_t *u) {
    if (lost(h)) return 15;
    u->gpu = h->index ? 97 : 0;
    u->memory = 0;
    return 0;
}
int nvmlDeviceGetTotalEccErrors(nvmlDevice_t h, int type, int counter, unsigned long long *c) {
    *c = (type == 1 && counter == 0 && h->index == 0) ? env_int("FAKE_NVML_ECC", 0) : 0;
    return 0;
}
/* GPU 1 runs the processes listed in FAKE_NVML_PIDS (comma separated); GPU 0 none. */
int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t h, unsigned int *count,
                                            nvmlProcessInfo_t *infos) {
    unsigned int pids[16], n = 0;
    const char *v = getenv("FAKE_NVML_PIDS");
    if (h->index == 1 && v) {
        char copy[256], *tok;
        strncpy(copy, v, sizeof copy - 1);
        copy[sizeof copy - 1] = 0;
        for (tok = strtok(copy, ","); tok && n < 16; tok = strtok(NULL, ",")) pids[n++] = atoi(tok);
    }
    if (*count < n) { *count = n; return 7; }
    for (unsigned int i = 0; i < n; i++) {
        infos[i].pid = pids[i];
        infos[i].usedGpuMemory = 1000ULL << 20;
        infos[i].gpuInstanceId = infos[i].computeInstanceId = 0xFFFFFFFF;
    }
    *count = n;
    return 0;
}
"""

FAKE_SMI = r'''#!{python} -I
import sys
with open({calls!r}, "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
if sys.argv[1:] == ["-q", "-x"] and {xml!r}:
    print("""<?xml version="1.0" ?><nvidia_smi_log>
<gpu id="00000000:01:00.0"><product_name>Fake H100</product_name><uuid>GPU-x0</uuid>
<fb_memory_usage><total>81559 MiB</total><used>3 MiB</used></fb_memory_usage>
<utilization><gpu_util>0 %</gpu_util></utilization>
<ecc_errors><volatile><sram_uncorrectable>0</sram_uncorrectable><dram_uncorrectable>2</dram_uncorrectable></volatile></ecc_errors>
<processes></processes></gpu>
<gpu id="00000000:02:00.0"><product_name>Fake H100</product_name><uuid>GPU-x1</uuid>
<fb_memory_usage><total>81559 MiB</total><used>30003 MiB</used></fb_memory_usage>
<utilization><gpu_util>97 %</gpu_util></utilization>
<ecc_errors><volatile><dram_uncorrectable>N/A</dram_uncorrectable></volatile></ecc_errors>
<processes><process_info><pid>4242</pid><type>C</type><used_memory>30000 MiB</used_memory></process_info>
<process_info><pid>1</pid><type>G</type><used_memory>5 MiB</used_memory></process_info></processes>
</gpu></nvidia_smi_log>""")
elif any(a.startswith("--query-gpu") for a in sys.argv):
    print("0, GPU-x0, Fake H100, 3, 81559, 0, 0")
'''


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the stand-in NVML library cannot be built")
    directory = tmp_path_factory.mktemp("nvml")
    (directory / "fake_nvml.c").write_text(FAKE_NVML_C)
    library = directory / "libnvidia-ml.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(library),
                    str(directory / "fake_nvml.c")], check=True, capture_output=True)
    return library


def fake_smi(directory: Path, xml: bool) -> Path:
    """A fake nvidia-smi first on PATH that logs each call; `xml`: it answers `-q -x`."""
    directory.mkdir()
    calls = directory / "calls.log"
    calls.write_text("")
    script = directory / "nvidia-smi"
    script.write_text(FAKE_SMI.format(python=sys.executable, calls=str(calls), xml=xml))
    script.chmod(0o755)
    return calls


def local_agent(tmp_path: Path) -> HostAgent:
    config = HostConfig(name="local", local=True, root=str(tmp_path / "root"), python=sys.executable)
    return HostAgent(config, LocalTransport("local"), namespace=NS)


def test_nvml_gives_each_gpu_its_use_health_and_foreign_processes(fake_nvml, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_PIDS", f"{os.getpid()},4242")
    monkeypatch.setenv("FAKE_NVML_ECC", "2")
    nvml = remote_agent.Nvml.load(str(fake_nvml))
    assert nvml is not None and nvml.processes[0].endswith("_v3")
    gpus, apps, error = nvml.sample()
    assert error == ""
    assert [(g["index"], g["uuid"], g["name"], g["memory_total_mib"]) for g in gpus] == [
        ("0", "GPU-fake-0", "Fake H100 0", 81559), ("1", "GPU-fake-1", "Fake H100 1", 81559)]
    assert [(g["memory_used_mib"], g["utilization_pct"]) for g in gpus] == [(3, 0), (30000, 97)]
    assert [(g["healthy"], g.get("health")) for g in gpus] == [
        (False, "2 uncorrected ECC errors"), (True, None)]
    assert apps == [("GPU-fake-1", os.getpid()), ("GPU-fake-1", 4242)]  # grew past no room


def test_nvml_reads_fixed_facts_once_and_a_lost_gpu_says_so(fake_nvml, monkeypatch):
    nvml = remote_agent.Nvml.load(str(fake_nvml))
    names = nvml.lib.fake_nvml_name_calls()
    monkeypatch.setenv("FAKE_NVML_LOST", "1")
    for _ in range(3):
        gpus, _, _ = nvml.sample()
    assert nvml.lib.fake_nvml_name_calls() == names  # a sample asks only what changes
    assert (gpus[1]["healthy"], gpus[1]["health"]) == (False, "GPU is lost")
    monkeypatch.setenv("FAKE_NVML_INIT_RC", "9")
    assert remote_agent.Nvml.load(str(fake_nvml)) is None  # init failed: nvidia-smi instead


def test_the_probe_reads_gpus_through_nvml_and_starts_no_nvidia_smi(fake_nvml, tmp_path, monkeypatch):
    calls = fake_smi(tmp_path / "smi", xml=True)
    monkeypatch.setenv("PATH", f"{calls.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(remote_agent.NVML_LIBRARY_ENV, str(fake_nvml))
    monkeypatch.setenv("FAKE_NVML_PIDS", "4242")
    agent = local_agent(tmp_path)
    try:
        answers = [agent.probe(set()) for _ in range(3)]  # exec, then resident
    finally:
        agent.close()
    assert agent.resident.requests == 2
    for facts in answers:
        assert [(g["uuid"], g["foreign"]) for g in facts["gpus"]] == [
            ("GPU-fake-0", False), ("GPU-fake-1", True)]
    assert calls.read_text() == ""


@pytest.mark.parametrize("xml, per_probe", [(True, ["-q -x"]), (False, None)])
def test_without_nvml_a_probe_starts_one_nvidia_smi(tmp_path, monkeypatch, xml, per_probe):
    calls = fake_smi(tmp_path / "smi", xml=xml)
    monkeypatch.setenv("PATH", f"{calls.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv(remote_agent.NVML_LIBRARY_ENV, str(tmp_path / "no-such-libnvidia-ml.so"))
    agent = local_agent(tmp_path)
    seen = []
    try:
        for _ in range(4):
            before = len(calls.read_text().splitlines())
            facts = agent.probe(set())
            seen.append(calls.read_text().splitlines()[before:])
    finally:
        agent.close()
    if xml:
        assert seen == [per_probe] * 4
        gpus = facts["gpus"]
        assert [(g["uuid"], g["foreign"], g["healthy"]) for g in gpus] == [
            ("GPU-x0", False, False), ("GPU-x1", True, True)]
        assert gpus[0]["health"] == "2 uncorrected ECC errors"
        assert (gpus[1]["memory_used_mib"], gpus[1]["utilization_pct"]) == (30003, 97)
    else:
        # A nvidia-smi without `-q -x`: the resident agent asks it once, then only the CSV
        # queries (the GPUs and the processes: two, as before this agent).
        assert [len(s) for s in seen] == [3, 3, 2, 2]
        assert json.dumps(facts["gpus"][0]["uuid"]) == '"GPU-x0"'
