"""xsbackup.hooks with real small executables in a hooks directory under tmp_path."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from xsbackup import config, hooks
from xsbackup.errors import HookVeto
from xsbackup.logs import LOG

EXTRA = {"XSBACKUP_CLIENT": "SHF00112233", "XSBACKUP_VOLUME": "documents",
         "XSBACKUP_REMOTE": "192.0.2.7"}


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    root = tmp_path / "state"
    root.mkdir()
    return config.load(root, environ={}).replace(hooks__timeout=10.0)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Warnings of the ``xsbackup`` logger (which may not propagate to caplog's handler)."""
    handler = _Collect()
    LOG.addHandler(handler)
    old_level, old_disabled = LOG.level, LOG.disabled
    LOG.setLevel(logging.DEBUG)
    LOG.disabled = False
    try:
        yield handler.messages
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(old_level)
        LOG.disabled = old_disabled


def hook(settings: config.Settings, stage: str, name: str, body: str,
         mode: int = 0o755) -> Path:
    d = settings.hooks_dir / stage
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(mode)
    return path


def group_alive(pgid: int) -> bool:
    """Whether any process that is not a zombie is still in process group ``pgid``
    (zombies may linger when PID 1 does not reap reparented children)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = (Path("/proc") / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            return True
    return False


def wait_group_gone(pgid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.02)
    return not group_alive(pgid)


# ---- pre-ingest: veto ----------------------------------------------------------------


def test_veto_raises_with_the_hooks_first_output_line(settings: config.Settings) -> None:
    hook(settings, "pre-ingest", "50-window",
         'echo ""\necho "backups are paused until 06:00"\necho "second line"\nexit 3')
    with pytest.raises(HookVeto) as info:
        hooks.veto("pre-ingest", settings, EXTRA)
    assert "backups are paused until 06:00" in info.value.message
    assert "second line" not in info.value.message
    assert "50-window" in info.value.message
    assert info.value.exit_code == 50


def test_veto_without_output_names_the_hook_and_status(settings: config.Settings) -> None:
    hook(settings, "pre-ingest", "silent", "exit 7")
    with pytest.raises(HookVeto, match=r"silent exited 7"):
        hooks.veto("pre-ingest", settings, EXTRA)


def test_veto_passes_when_every_hook_succeeds(settings: config.Settings,
                                              tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    hook(settings, "pre-ingest", "a", f'echo a >> "{marks}"')
    hook(settings, "pre-ingest", "b", f'echo b >> "{marks}"; echo "chatty but fine"')
    hooks.veto("pre-ingest", settings, EXTRA)
    assert marks.read_text() == "a\nb\n"


def test_veto_stops_at_the_first_refusal(settings: config.Settings, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    hook(settings, "pre-ingest", "10-ok", f'echo 10 >> "{marks}"')
    hook(settings, "pre-ingest", "20-no", f'echo 20 >> "{marks}"; echo nope; exit 1')
    hook(settings, "pre-ingest", "30-never", f'echo 30 >> "{marks}"')
    with pytest.raises(HookVeto, match="20-no: nope"):
        hooks.veto("pre-ingest", settings, EXTRA)
    assert marks.read_text() == "10\n20\n"


def test_veto_on_timeout(settings: config.Settings) -> None:
    hook(settings, "pre-ingest", "slow", "sleep 30")
    started = time.monotonic()
    with pytest.raises(HookVeto, match="slow timed out"):
        hooks.veto("pre-ingest", settings.replace(hooks__timeout=0.5), EXTRA)
    assert time.monotonic() - started < 20


def test_no_hooks_directory_is_fine(settings: config.Settings) -> None:
    assert not settings.hooks_dir.exists()
    hooks.veto("pre-ingest", settings, EXTRA)
    hooks.run_post("on-failure", settings, EXTRA)
    assert hooks.run("post-snapshot", settings, EXTRA) == []


def test_relative_hooks_dir_is_under_the_state_root(settings: config.Settings,
                                                    tmp_path: Path) -> None:
    moved = settings.replace(hooks__dir="my-hooks")
    assert moved.hooks_dir == settings.root / "my-hooks"
    hook(moved, "pre-ingest", "no", "echo from my-hooks; exit 1")
    with pytest.raises(HookVeto, match="from my-hooks"):
        hooks.veto("pre-ingest", moved, EXTRA)
    hooks.veto("pre-ingest", settings, EXTRA)  # the default directory has none


# ---- order and selection -------------------------------------------------------------


def test_hooks_run_in_name_order(settings: config.Settings, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    for name in ("20-b", "10-a", "30-c", "05-first", "Z-upper", "a-lower"):
        hook(settings, "post-snapshot", name, f'echo {name} >> "{marks}"')
    results = hooks.run("post-snapshot", settings, EXTRA)
    expected = ["05-first", "10-a", "20-b", "30-c", "Z-upper", "a-lower"]  # byte order
    assert marks.read_text().split() == expected
    assert [r.path.name for r in results] == expected
    assert all(r.ok for r in results)


def test_non_executable_dotfiles_backups_and_directories_are_skipped(
        settings: config.Settings, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    hook(settings, "post-ingest", "10-runs", f'echo runs >> "{marks}"')
    hook(settings, "post-ingest", "20-not-executable", f'echo noexec >> "{marks}"', mode=0o644)
    hook(settings, "post-ingest", ".hidden", f'echo hidden >> "{marks}"')
    hook(settings, "post-ingest", "30-edited~", f'echo backup >> "{marks}"')
    (settings.hooks_dir / "post-ingest" / "40-a-directory").mkdir(mode=0o755)
    hook(settings, "post-ingest", "50-also-runs", f'echo also >> "{marks}"')
    assert [p.name for p in hooks.hook_paths(settings, "post-ingest")] == \
        ["10-runs", "50-also-runs"]
    hooks.run_post("post-ingest", settings, EXTRA)
    assert marks.read_text() == "runs\nalso\n"


def test_only_the_stages_own_directory_runs(settings: config.Settings, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    hook(settings, "post-snapshot", "x", f'echo post-snapshot >> "{marks}"')
    hook(settings, "on-failure", "x", f'echo on-failure >> "{marks}"')
    hooks.run_post("on-failure", settings, EXTRA)
    assert marks.read_text() == "on-failure\n"


# ---- environment and I/O -------------------------------------------------------------


def test_environment_passed_to_hooks(settings: config.Settings, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Paris")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    monkeypatch.setenv("XSBACKUP_LEAKED", "do-not-leak")
    dump = tmp_path / "env.txt"
    hook(settings, "on-failure", "dump", f'env > "{dump}"')
    extra = {**EXTRA, "XSBACKUP_ERROR": "rsync exited 23 on documents",
             "XSBACKUP_RSYNC_EXIT": "23"}
    hooks.run_post("on-failure", settings, extra)
    env = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert env["XSBACKUP_STAGE"] == "on-failure"
    assert env["XSBACKUP_ROOT"] == str(settings.root)
    assert env["XSBACKUP_CLIENT"] == "SHF00112233"
    assert env["XSBACKUP_VOLUME"] == "documents"
    assert env["XSBACKUP_REMOTE"] == "192.0.2.7"
    assert env["XSBACKUP_ERROR"] == "rsync exited 23 on documents"
    assert env["XSBACKUP_RSYNC_EXIT"] == "23"
    assert env["PATH"] == os.environ["PATH"]
    assert env["TZ"] == "Europe/Paris"
    assert env["LANG"] == "C.UTF-8"
    assert env["HOME"] == str(tmp_path / "home")
    assert "SECRET_TOKEN" not in env
    assert "XSBACKUP_LEAKED" not in env
    xs = {k for k in env if k.startswith("XSBACKUP_")}
    assert xs == {"XSBACKUP_STAGE", "XSBACKUP_ROOT", *extra}


def test_default_path_when_the_process_has_none(settings: config.Settings, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    dump = tmp_path / "env.txt"
    path = hook(settings, "post-ingest", "dump", f'/usr/bin/env > "{dump}"')
    monkeypatch.delenv("PATH")
    res = hooks.run_one(path, hooks._env(settings, "post-ingest", {}), 10)
    assert res.ok, res.output
    assert "PATH=/usr/local/bin:/usr/bin:/bin\n" in dump.read_text()


def test_hook_output_is_captured_and_stdin_is_closed(settings: config.Settings) -> None:
    hook(settings, "post-ingest", "io",
         'if read line; then echo "got stdin"; else echo "stdin closed"; fi\necho err >&2')
    (res,) = hooks.run("post-ingest", settings, EXTRA)
    assert res.ok
    assert res.output.splitlines() == ["stdin closed", "err"]


def test_hooks_run_in_their_own_session(settings: config.Settings, tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    hook(settings, "post-ingest", "ids", f'ps -o pid=,pgid=,sid= -p $$ > "{ids}"')
    hooks.run_post("post-ingest", settings, EXTRA)
    pid, pgid, sid = (int(x) for x in ids.read_text().split())
    assert pid == pgid == sid
    assert pgid != os.getpgrp()


# ---- post-* and on-failure: logged, never raised --------------------------------------


def test_post_failure_is_logged_not_raised_and_later_hooks_run(
        settings: config.Settings, tmp_path: Path, logged: list[str]) -> None:
    marks = tmp_path / "marks"
    hook(settings, "post-snapshot", "10-broken", 'echo "replica unreachable"\nexit 4')
    hook(settings, "post-snapshot", "20-next", f'echo next >> "{marks}"')
    hooks.run_post("post-snapshot", settings, EXTRA)
    assert marks.read_text() == "next\n"
    (msg,) = [m for m in logged if "10-broken" in m]
    assert "client=SHF00112233" in msg
    assert "volume=documents" in msg
    assert "exited 4" in msg
    assert "replica unreachable" in msg
    assert not [m for m in logged if "20-next" in m]


def test_post_timeout_kills_the_process_group(settings: config.Settings, tmp_path: Path,
                                              logged: list[str]) -> None:
    pidfile = tmp_path / "pid"
    marks = tmp_path / "marks"
    # The hook and a background child both sleep: killing the hook alone would leave the
    # child (and the pipe it holds) behind.
    hook(settings, "post-snapshot", "10-hang",
         f'echo $$ > "{pidfile}.tmp"; mv "{pidfile}.tmp" "{pidfile}"\n'
         'sleep 30 &\nsleep 30')
    hook(settings, "post-snapshot", "20-after", f'echo after >> "{marks}"')
    started = time.monotonic()
    hooks.run_post("post-snapshot", settings.replace(hooks__timeout=0.5), EXTRA)
    elapsed = time.monotonic() - started
    assert elapsed < 20  # well before the hook's sleep would have ended
    pgid = int(pidfile.read_text())
    assert wait_group_gone(pgid), f"process group {pgid} survived the timeout"
    assert marks.read_text() == "after\n"
    assert any("10-hang" in m and "killed after 0.5s" in m for m in logged)


def test_post_timeout_result(settings: config.Settings) -> None:
    path = hook(settings, "post-ingest", "hang", "echo started\nsleep 30")
    started = time.monotonic()
    res = hooks.run_one(path, hooks._env(settings, "post-ingest", EXTRA), 0.5)
    assert time.monotonic() - started < 20
    assert res.returncode is None
    assert not res.ok
    assert res.output == "started\n"


def test_post_hook_that_cannot_start_is_logged_not_raised(
        settings: config.Settings, logged: list[str]) -> None:
    d = settings.hooks_dir / "on-failure"
    d.mkdir(parents=True)
    bad = d / "bad-interpreter"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    hooks.run_post("on-failure", settings, EXTRA)
    assert any("could not run" in m and "client=SHF00112233" in m for m in logged)


# ---- hooks that cannot even start ----------------------------------------------------


def test_pre_hook_that_cannot_start_refuses_with_one_line(settings: config.Settings) -> None:
    d = settings.hooks_dir / "pre-ingest"
    d.mkdir(parents=True)
    bad = d / "bad-interpreter"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    with pytest.raises(HookVeto, match="bad-interpreter"):
        hooks.veto("pre-ingest", settings, EXTRA)


def test_post_hook_that_cannot_start_does_not_skip_the_others(
        settings: config.Settings, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    d = settings.hooks_dir / "on-failure"
    d.mkdir(parents=True)
    bad = d / "10-bad-interpreter"
    bad.write_text("#!/nonexistent/interpreter\n")
    bad.chmod(0o755)
    hook(settings, "on-failure", "20-mail", f'echo mailed >> "{marks}"')
    hooks.run_post("on-failure", settings, EXTRA)
    assert marks.read_text() == "mailed\n"
