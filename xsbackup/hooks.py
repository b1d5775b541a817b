"""Admin hooks: executables in ``<hooks.dir>/<stage>/``, run in name order.

Stages: ``pre-ingest`` (may veto a transfer), ``post-ingest``, ``post-snapshot``,
``on-failure`` (and ``post-prune``; ``offsite-failed`` when off-site replication failed
``offsite.notify_after`` times in a row, with ``XSBACKUP_FAILURES``). Each hook runs
without a shell, in its own process group, with stdin closed, a timeout
(``hooks.timeout``; the whole group is killed when it expires) and these environment
variables, besides ``PATH``, ``HOME``, ``LANG`` and
``TZ`` (the working directory is the server's own; use the absolute paths given):

=========================  ======================================================
``XSBACKUP_STAGE``         the stage name
``XSBACKUP_ROOT``          the state root
``XSBACKUP_CLIENT``        the client's serial
``XSBACKUP_VOLUME``        the volume
``XSBACKUP_REMOTE``        the client's address (pre-ingest, post-ingest)
``XSBACKUP_SNAPSHOT_ID``   the snapshot id (post-ingest, post-snapshot)
``XSBACKUP_SNAPSHOT_PATH`` the snapshot directory (post-ingest: its incoming path)
``XSBACKUP_RSYNC_EXIT``    rsync's exit code (post-ingest, on-failure)
``XSBACKUP_STATS``         the snapshot's stats as JSON (post-snapshot)
``XSBACKUP_ERROR``         what failed (on-failure, offsite-failed)
``XSBACKUP_FAILURES``      failures in a row (offsite-failed)
=========================  ======================================================

A ``pre-*`` hook's nonzero exit refuses the operation with the hook's first output line.
A failing or hanging ``post-*``/``on-failure`` hook is logged and never affects data.
"""

from __future__ import annotations

import os
from pathlib import Path

from xsbackup import procs
from xsbackup.config import Settings
from xsbackup.errors import HookVeto
from xsbackup.logs import LOG
from xsbackup.records import record

MAX_OUTPUT = 64 * 1024  # bytes of a hook's output kept for the log and a veto line


@record(frozen=True)
class HookResult:
    path: Path
    returncode: int | None  # None: killed at its timeout
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_line(self) -> str:
        for line in self.output.splitlines():
            if line.strip():
                return line.strip()[:200]
        return f"{self.path.name} exited {self.returncode}"


def hook_paths(settings: Settings, stage: str) -> list[Path]:
    directory = settings.hooks_dir / stage
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        path = directory / name
        if name.startswith(".") or name.endswith("~") or not path.is_file():
            continue
        if os.access(path, os.X_OK):
            out.append(path)
    return out


def _env(settings: Settings, stage: str, extra: dict[str, str]) -> dict[str, str]:
    return procs.environment({"XSBACKUP_STAGE": stage, "XSBACKUP_ROOT": str(settings.root),
                              **extra}, inherit=("PATH", "HOME", "LANG", "TZ"), c_locale=False)


def run_one(path: Path, env: dict[str, str], timeout: float) -> HookResult:
    """Run one hook. Output goes to an unlinked temporary file, not a pipe, so a daemon
    the hook leaves behind can neither hang us nor turn a success into a timeout; we wait
    for the hook process alone, then kill its whole process group."""
    import tempfile  # not at import: most runs have no hook to run

    with tempfile.TemporaryFile() as out:
        try:
            proc = procs.spawn([str(path)], why=f"hook {path.name}", env=env,
                               stdin=procs.DEVNULL, stdout=out, stderr=procs.STDOUT,
                               new_session=True)
        except OSError as e:
            # A hook that cannot start (bad interpreter, vanished) fails like exit 126.
            return HookResult(path, 126, f"{path.name} could not run: {e.strerror or e}")
        code = procs.wait(proc, timeout)
        procs.kill_group(proc)
        proc.wait()
        out.seek(0)
        text = out.read(MAX_OUTPUT).decode(errors="replace")
    return HookResult(path, code, text)


def run(stage: str, settings: Settings, extra: dict[str, str]) -> list[HookResult]:
    env = _env(settings, stage, extra)
    timeout = settings.hooks.timeout
    results = []
    who = f"client={extra.get('XSBACKUP_CLIENT', '-')} volume={extra.get('XSBACKUP_VOLUME', '-')}"
    for path in hook_paths(settings, stage):
        res = run_one(path, env, timeout)
        results.append(res)
        if res.returncode is None:
            LOG.warning("%s hook %s/%s killed after %gs", who, stage, path.name, timeout)
        elif res.returncode == 126:
            LOG.warning("%s hook %s/%s could not run: %s", who, stage, path.name,
                        res.first_line())
        elif res.returncode != 0:
            LOG.warning("%s hook %s/%s exited %s: %s", who, stage, path.name,
                        res.returncode, res.first_line())
        if stage.startswith("pre-") and not res.ok:
            break
    return results


def veto(stage: str, settings: Settings, extra: dict[str, str]) -> None:
    """Run a ``pre-*`` stage; raise ``HookVeto`` with the first failing hook's line."""
    for res in run(stage, settings, extra):
        if not res.ok:
            reason = res.first_line() if res.returncode is not None else \
                f"{res.path.name} timed out"
            raise HookVeto(f"refused by {stage} hook {res.path.name}: {reason}")


def run_post(stage: str, settings: Settings, extra: dict[str, str]) -> None:
    """Run a ``post-*``/``on-failure`` stage; failures are logged, never raised."""
    try:
        run(stage, settings, extra)
    except OSError as e:
        LOG.warning("client=%s hook stage %s could not run: %s",
                    extra.get("XSBACKUP_CLIENT", "-"), stage, e)

