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
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

from xsbackup.logs import LOG
from xsbackup.records import record

if TYPE_CHECKING:  # at run time, the module __getattr__ below (re-exported: "as")
    import subprocess
    from subprocess import DEVNULL as DEVNULL  # noqa: PLC0414
    from subprocess import PIPE as PIPE  # noqa: PLC0414
    from subprocess import STDOUT as STDOUT  # noqa: PLC0414
    from subprocess import Popen as Popen  # noqa: PLC0414
    from subprocess import TimeoutExpired as TimeoutExpired  # noqa: PLC0414

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
GRACE_SECONDS = 10.0

# What a child inherits from our environment when the caller passes nothing else.
INHERITED = ("PATH",)
_SUBPROCESS_NAMES = ("TimeoutExpired", "PIPE", "DEVNULL", "STDOUT", "Popen")


def __getattr__(name: str) -> Any:
    """``procs.Popen``, ``PIPE``, ``DEVNULL``, ``STDOUT`` and ``TimeoutExpired``: the
    ``subprocess`` names, which is loaded on first use (the forced command's ``call``
    never loads it: it and ``selectors`` and ``locale`` are 2 ms of every connection)."""
    if name in _SUBPROCESS_NAMES:
        import subprocess

        return getattr(subprocess, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    import subprocess

    args = _check_argv(argv)
    LOG.debug("running %s: %s", why, " ".join(args))
    return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr,
                            env=dict(env) if env is not None else environment(),
                            pass_fds=tuple(pass_fds), close_fds=True,
                            start_new_session=new_session, bufsize=bufsize, cwd=cwd)


def stop(proc: subprocess.Popen[Any], grace: float = GRACE_SECONDS) -> int:
    """End ``proc``: SIGTERM (to its group when it leads one), then SIGKILL after
    ``grace`` seconds. Returns its exit status. Safe on a process that already ended."""
    import subprocess

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
    import subprocess

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
    its exit status (``-N`` for signal N, as ``Popen.returncode``); if we are interrupted
    meanwhile, the child is stopped first.

    ``os.posix_spawn``, not ``subprocess``: the same child as ``spawn`` would start (the
    scrubbed environment, its ``PATH`` searched for ``argv[0]``, SIGPIPE and SIGXFSZ back
    to their defaults, ``pass_fds`` inherited and every other descriptor of ours closed
    at exec, as all of them are opened close-on-exec), without loading ``subprocess`` on
    every SSH connection."""
    args = _check_argv(argv)
    LOG.debug("running %s: %s", why, " ".join(args))
    child_env = dict(env) if env is not None else environment()
    exe = _search_path(args[0], child_env.get("PATH", DEFAULT_PATH))
    opened = [fd for fd in pass_fds if not os.get_inheritable(fd)]
    try:
        for fd in opened:
            os.set_inheritable(fd, True)
        pid = os.posix_spawn(exe, args, child_env,
                             setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
    finally:
        for fd in opened:
            os.set_inheritable(fd, False)
    try:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    except BaseException:
        _stop_pid(pid)
        raise


def _search_path(name: str, path: str) -> str:
    """``name``'s executable as ``exec*p`` finds it in ``path`` (the child's ``PATH``, as
    ``Popen`` searches it); a name with a slash is taken as it is."""
    if "/" in name:
        return name
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, f"No such file or directory: {name!r}")


def _stop_pid(pid: int, grace: float = GRACE_SECONDS) -> int:
    """``stop`` for a child ``call`` started: SIGTERM, then SIGKILL after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


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
    import subprocess

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

