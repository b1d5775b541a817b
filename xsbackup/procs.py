"""Every child process xsbackup starts goes through here (as borg's helpers/process.py).

- An argv list only, never a shell: a string argv is refused.
- A scrubbed environment: the child sees ``PATH`` and ``LC_ALL=C`` plus exactly what
  the caller names, never the server's whole environment (which may hold secrets).
  Only the names a caller lists in ``inherit`` come from ours.
- The command is logged at debug level with the reason the caller gives.
- Timeouts end the child (its whole process group when it has one of its own), and a
  SIGINT/SIGTERM or any exception while we wait terminates it, then kills it after a grace
  period, so no child outlives the operation that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import IO, Any

from xsbackup.logs import LOG
from xsbackup.records import record

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
GRACE_SECONDS = 10.0

# What a child inherits from our environment when the caller passes nothing else.
INHERITED = ("PATH",)

TimeoutExpired = subprocess.TimeoutExpired
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
Popen = subprocess.Popen


def environment(extra: Mapping[str, str] | None = None,
                inherit: Sequence[str] = INHERITED, c_locale: bool = True) -> dict[str, str]:
    """The scrubbed environment: ``inherit``-ed names from ours, ``LC_ALL=C`` (unless
    ``c_locale`` is false: hooks keep the admin's ``LANG``), then ``extra``."""
    env = {k: os.environ[k] for k in inherit if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    if c_locale:
        env["LC_ALL"] = "C"
    env.update(extra or {})
    return env


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes) or not argv:
        raise TypeError("procs: argv must be a non-empty list of arguments, never a string")
    return [str(a) for a in argv]


def spawn(argv: Sequence[str], *, why: str, env: Mapping[str, str] | None = None,
          stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None,
          stderr: int | IO[Any] | None = None, pass_fds: Sequence[int] = (),
          new_session: bool = False, bufsize: int = -1,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell) with a scrubbed environment, in ``cwd`` when given; the
    caller waits for it."""
    args = _check_argv(argv)
    LOG.debug("running %s: %s", why, " ".join(args))
    return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr,
                            env=dict(env) if env is not None else environment(),
                            pass_fds=tuple(pass_fds), close_fds=True,
                            start_new_session=new_session, bufsize=bufsize, cwd=cwd)


def stop(proc: subprocess.Popen[Any], grace: float = GRACE_SECONDS) -> int:
    """End ``proc``: SIGTERM (to its group when it leads one), then SIGKILL after
    ``grace`` seconds. Returns its exit status. Safe on a process that already ended."""
    _signal(proc, signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        _signal(proc, signal.SIGKILL)
        return proc.wait()


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc``'s whole process group (for children started with
    ``new_session``), including what it left running in the background."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal(proc: subprocess.Popen[Any], signum: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if _leads_group(proc):
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)


def _leads_group(proc: subprocess.Popen[Any]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def wait(proc: subprocess.Popen[Any], timeout: float | None = None) -> int | None:
    """Wait for ``proc``; None when ``timeout`` passed first (the child then still runs).
    An exception or signal while waiting (KeyboardInterrupt, SystemExit from a SIGTERM
    handler) stops the child before it propagates."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    except BaseException:
        stop(proc)
        raise


def call(argv: Sequence[str], *, why: str, env: Mapping[str, str] | None = None,
         pass_fds: Sequence[int] = ()) -> int:
    """Run ``argv`` on our own stdin/stdout/stderr (the forced command's rsync) and return
    its exit status; if we are interrupted meanwhile, the child is stopped first."""
    proc = spawn(argv, why=why, env=env, pass_fds=pass_fds)
    try:
        return proc.wait()
    except BaseException:
        stop(proc)
        raise


@record(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def first_error_line(self) -> str:
        for text in (self.stderr, self.stdout):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return f"exit status {self.returncode}"


def run(argv: Sequence[str], *, why: str, env: Mapping[str, str] | None = None,
        timeout: float | None = None, cwd: str | None = None) -> Result:
    """Run ``argv`` to completion (in ``cwd`` when given) with its output captured (text).
    At ``timeout`` the child is stopped and ``returncode`` is None. Never raises for a
    non-zero exit."""
    proc = spawn(argv, why=why, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        code = None
    except BaseException:
        stop(proc)
        raise
    return Result(tuple(proc.args), code,  # type: ignore[arg-type]
                  out.decode(errors="replace"), err.decode(errors="replace"))

