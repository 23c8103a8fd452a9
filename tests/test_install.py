"""The install path: scripts, CI, the README's two commands, and what the wheel carries.

Quick (the wheel build is the slowest, a few seconds) and each can fail: they run the
real scripts with a fake or system interpreter, never installing anything for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("scripts/*.sh")) + [REPO / ".ci" / "run"]


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        argv,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _system_python() -> str:
    """A Python that is not a virtual environment: Debian's (externally managed) if there
    is one, else the interpreter this venv was made from."""
    for candidate in ("/usr/bin/python3", os.path.join(sys.base_prefix, "bin", "python3")):
        if os.path.exists(candidate):
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.prefix == sys.base_prefix)"],
                capture_output=True,
                text=True,
            )
            if out.stdout.strip() == "True":
                return candidate
    pytest.skip("no Python outside a virtual environment on this machine")


def _logging_python(path: Path, real: str, log: Path) -> Path:
    """A `python` that records its arguments in log, then runs the real one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "$*" >>"{log}"\nexec "{real}" "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_scripts_are_valid_bash_and_executable(script):
    assert os.access(script, os.X_OK), f"{script} is not executable"
    checked = _run(["bash", "-n", str(script)])
    assert checked.returncode == 0, checked.stderr


def test_install_refuses_to_pip_install_into_a_system_python(tmp_path):
    """A "venv" whose python is really a system interpreter (on Debian: externally
    managed, PEP 668) is refused before pip runs at all."""
    log = tmp_path / "calls.log"
    venv = tmp_path / "not-a-venv"
    _logging_python(venv / "bin" / "python", _system_python(), log)
    done = _run(["scripts/install.sh", "jobs"], env={"SHEETRUNNER_VENV": str(venv)})
    assert done.returncode != 0
    assert "refusing to pip-install" in done.stderr
    assert "not a virtual environment" in done.stderr
    assert "-m pip" not in log.read_text()


def test_install_names_the_debian_package_when_python_cannot_make_a_venv(tmp_path):
    """Debian without python3-venv: `python3 -m venv` fails; one line says what to install
    and no half-made venv is left behind."""
    real = _system_python()
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = venv ]; then\n'
        '  mkdir -p "$3/bin"\n'
        "  echo 'The virtual environment was not created successfully because ensurepip "
        "is not available.' >&2\n"
        "  exit 1\n"
        "fi\n"
        f'exec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    done = _run(
        ["scripts/install.sh", "jobs"], env={"PYTHON": str(fake), "SHEETRUNNER_VENV": str(venv)}
    )
    assert done.returncode == 1
    assert "apt-get install python3-venv" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not venv.exists()


def test_ci_runs_the_readme_test_command_and_checks_the_system_python():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert "make test || status=$?" in lines and "make lint || status=1" in lines
    assert "PYTHON=/usr/bin/python3 scripts/install.sh --check" in lines


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_readme_two_commands_are_the_makefile_targets_and_use_the_venv():
    section = _readme_section("The two commands")
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands = re.findall(r"^make (\S+)", block, re.M)
    assert commands == ["demo", "test"]
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    assert set(commands) <= targets
    assert re.search(r"^test:.*\n\tscripts/test\.sh$", makefile, re.M)
    assert re.search(r"^demo:.*\n\tscripts/demo\.sh$", makefile, re.M)
    assert ".venv" in section
    for script in ("demo.sh", "test.sh"):
        assert "scripts/install.sh" in (REPO / "scripts" / script).read_text()


def test_the_readme_install_section_names_the_extras():
    section = _readme_section("Installing sheetrunner for your own project")
    for needed in ("pip install -e '.[jobs]'", "pipx install", "[plot]", "sheetrunner init"):
        assert needed in section


def test_the_wheel_carries_the_agent_the_protocol_py_typed_and_the_license(tmp_path):
    """Built from a copy of what the wheel is made of, so a build here never races another
    build in the work tree."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "sheetrunner",
        src / "sheetrunner",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "dist"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sheetrunner-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    for needed in (
        "sheetrunner/py.typed",
        "sheetrunner/remote/agent.py",
        "sheetrunner/remote/protocol.py",
        "sheetrunner/cli.py",
    ):
        assert needed in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: plot" in metadata
    assert "Provides-Extra: jobs" in metadata
    assert "Project-URL: Source," in metadata
