"""``procs.call``: the forced command's rsync child, started with ``os.posix_spawn``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from xsbackup import procs


def test_exit_status_passes_through(tmp_path: Path) -> None:
    assert procs.call(["sh", "-c", "exit 24"], why="test") == 24
    assert procs.call(["sh", "-c", "kill -TERM $$"], why="test") == -15


def test_scrubbed_environment_and_the_childs_path(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    out = tmp_path / "env.txt"
    tool.write_text(f"#!/bin/sh\nenv > {out}\n")
    tool.chmod(0o755)
    os.environ["XSBACKUP_TEST_SECRET"] = "no"
    try:
        rc = procs.call(["mytool"], why="test",
                        env=procs.environment({"PATH": f"{tool.parent}:/usr/bin:/bin"}))
    finally:
        del os.environ["XSBACKUP_TEST_SECRET"]
    assert rc == 0
    seen = out.read_text()
    assert "LC_ALL=C" in seen
    assert "XSBACKUP_TEST_SECRET" not in seen
    with pytest.raises(FileNotFoundError):
        procs.call(["no-such-tool-xsbackup"], why="test")


def test_only_pass_fds_are_inherited(tmp_path: Path) -> None:
    passed = os.open(tmp_path / "a", os.O_CREAT | os.O_RDWR)
    kept = os.open(tmp_path / "b", os.O_CREAT | os.O_RDWR)
    out = tmp_path / "fds.txt"
    script = (f"import os; open({str(out)!r}, 'w').write(repr(["
              f"os.path.exists('/proc/self/fd/{passed}'), "
              f"os.path.exists('/proc/self/fd/{kept}')]))")
    try:
        assert procs.call([sys.executable, "-c", script], why="test", pass_fds=[passed]) == 0
        assert not os.get_inheritable(passed)  # as it was, afterwards
    finally:
        os.close(passed)
        os.close(kept)
    assert out.read_text() == "[True, False]"


def test_the_child_does_not_ignore_sigpipe(tmp_path: Path) -> None:
    """Python ignores SIGPIPE; rsync must get the default back, as with ``Popen``."""
    out = tmp_path / "status"
    assert procs.call(["sh", "-c", f"grep SigIgn /proc/$$/status > {out}"], why="test") == 0
    ignored = int(out.read_text().split()[1], 16)
    assert not ignored & (1 << (13 - 1))  # SIGPIPE is 13
