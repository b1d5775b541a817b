"""The README's operations, as written, agree with the repository: links stay inside it,
the test command is the CI script, and the OpenSSH steps create and name the same paths,
account, group and sshd block as the files in ``etc/`` (which docs/operations.md
explains). A fresh-Debian run of those steps is described in docs/operations.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
ETC = REPO / "etc"
UNIT = ETC / "systemd" / "xsbackup.service"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL)


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md", "docs/protocol.md"])
def test_links_stay_inside_the_repository_and_resolve(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"https?://", target):
            continue
        path = (REPO / doc).parent / target
        assert path.resolve().is_relative_to(REPO), (doc, target)
        assert path.exists(), (doc, target)


def test_the_test_command_is_the_ci_script() -> None:
    blocks = code_blocks(section("Set up"))
    assert "bash .ci/run\n" in blocks
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3-venv" in ci  # a fresh Debian has no venv module
    assert ci.rstrip().endswith(".venv/bin/python -m pytest -q -n 2")
    assert "`.venv/bin/python -m pytest -q -n 2`" in section("Set up")  # as README says


def test_the_quick_start_installs_what_it_needs() -> None:
    first = code_blocks(section("Set up"))[0]
    assert first.splitlines()[0] == ("sudo apt-get update && sudo apt-get install -y "
                                     "python3-venv rsync openssh-client")


def test_the_sshd_block_is_the_shipped_snippet() -> None:
    shipped = [line for line in (ETC / "sshd_config.d" / "xsbackup.conf").read_text()
               .splitlines() if line and not line.startswith("#")]
    blocks = [b.splitlines() for b in code_blocks(section("Wiring OpenSSH"))]
    assert shipped in blocks
    assert "Match User" not in README


def test_the_openssh_steps_make_what_etc_names() -> None:
    steps = code_blocks(section("Wiring OpenSSH"))[0]
    unit = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) --root (\S+) ", unit, re.MULTILINE)
    assert exec_start is not None
    program, root = exec_start[1], exec_start[2]
    venv = program.removesuffix("/bin/xsbackup")
    assert f"sudo python3 -m venv {venv}\n" in steps
    assert f"sudo {venv}/bin/pip install " in steps
    assert f"ReadWritePaths={root}\n" in unit
    assert f"sudo install -d -o xsbackup -g xsbackup -m 0750 {root}\n" in steps
    assert f"--home-dir {root} " in steps
    assert re.search(r"^User=xsbackup$", unit, re.MULTILINE)
    assert re.search(r"^Group=xsbackup$", unit, re.MULTILINE)
    assert "--user-group" in steps
    snippet = (ETC / "sshd_config.d" / "xsbackup.conf").read_text()
    assert f"AuthorizedKeysFile {root}/ssh/authorized_keys" in snippet
    assert "Match Group xsbackup" in snippet
    assert "sudo usermod -p '*' xsbackup" in steps
    assert "UsePAM" in section("Wiring OpenSSH")


def test_the_readme_states_the_units_measured_score() -> None:
    stated = re.search(r"etc/systemd/xsbackup.service` rates it \*\*([0-9.]+) OK\*\* "
                       r"\(systemd ([0-9]+);", README.replace("\n", " "))
    assert stated is not None
    assert float(stated[1]) <= 4.0
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: cannot measure the score")
    version = subprocess.run(["systemd-analyze", "--version"], capture_output=True,
                             text=True).stdout.split()
    if len(version) < 2 or version[1] != stated[2]:
        pytest.skip(f"the README's score is systemd {stated[2]}'s; this is {version[:2]}")
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                          str(UNIT)], capture_output=True, text=True).stdout
    assert f"Overall exposure level for xsbackup.service: {stated[1]} OK" in out
