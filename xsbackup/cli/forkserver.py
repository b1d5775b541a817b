"""``serve``'s pre-loaded forced command server: ``python -m xsbackup.cli.forkserver``.

Every SSH connection runs the forced command, a new Python process that pays its
interpreter start-up and imports before it does anything (bench/README.md, "The forced
command's own cost"). ``serve`` (``server.forked``) starts this module once as its own
single-threaded process: it imports what the forced command runs, then listens on
``<root>/run/forced.sock`` (``layout.forked_socket``; the directory is the service
user's alone, mode 0700), and the forced command's thin front (``cli.forkclient``) hands
it the connection.

For each connection from a process of its own user (``SO_PEERCRED``; any other is closed
unanswered, so that process runs the command itself), it forks a child, and never waits
for one (``SIGCHLD`` reaps them). The child:

* takes the request: the forced command's argument list, environment and working
  directory;
* answers ``no`` (the front then runs the command itself, as without ``serve``) unless
  the line is a forced command's (``entry.forced_args``) for this server's state root;
* otherwise answers ``ok`` and, once the front says ``go`` with its descriptors 0, 1 and 2
  (it has not given up waiting: ``forkclient.ANSWER_SECONDS``), becomes what the forced
  command process would have been:
  its own session, the received descriptors as 0, 1 and 2, the received environment
  (``XSBACKUP_CRASH_AT`` included), the service umask, the default signal dispositions of
  a fresh interpreter; and runs the same call (``entry.forced_exit`` of
  ``entry.run_forced``: the configuration read from disk, logging set up, the request
  dispatched), then answers its exit code;
* ends its whole process group (rsync included) when the front goes away first (sshd,
  or the embedded SSH server, ended the forced command), as a signal to the forced
  command process would have (``hang_up_with``).

Nothing here chooses the state root, the configuration or the client: they come from the
forced command's argument list (``authorized_keys``) and its environment, read as the
in-process path reads them. The server ends on SIGTERM (removing its socket), and when
its parent (``serve``) is gone; the children it forked finish their requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import select
import signal
import socket
import stat
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn

from xsbackup import crashpoints, layout
from xsbackup.cli import entry, failure, forced, forkclient
from xsbackup.ingest import command, dispatch, upload
from xsbackup.logs import LOG
from xsbackup.restore import archive, resolve
from xsbackup.storage import choice, hardlink

PRELOADED = (failure, forced, dispatch, command, upload,  # what every connection runs
             choice, hardlink,  # the default backend's
             archive, resolve)  # the restore verbs' (list, archive, manifest)
USAGE = "usage: python -m xsbackup.cli.forkserver --root STATE_ROOT"
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
BACKLOG = 256
TICK = 1.0              # seconds between checks that serve is still there
REQUEST_TIMEOUT = 10.0  # seconds a front has to send its whole request
FDS = 3                 # stdin, stdout, stderr
Handler = Callable[[int, FrameType | None], Any] | int | None


class Stopped(Exception):
    """SIGTERM, SIGINT or SIGHUP: stop listening."""


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--root":
        sys.stderr.write(f"{USAGE}\n")
        return 2
    root = layout.state_root(argv[1], {})
    for fd in range(FDS):  # the children's descriptors 0-2 are taken by number
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)
    try:
        listener, inode = listen(root)
    except OSError as e:
        sys.stderr.write(f"xsbackup: forced command server: cannot listen on "
                         f"{layout.forked_socket(root)}: {e.strerror or e}\n")
        return 1
    try:
        return serve_forever(listener, root)
    finally:
        listener.close()
        with contextlib.suppress(OSError):
            if os.lstat(layout.forked_socket(root)).st_ino == inode:
                os.unlink(layout.forked_socket(root))


def listen(root: str) -> tuple[socket.socket, int]:
    """The listening socket at ``layout.forked_socket(root)`` and its inode. Bound aside
    and renamed into place, so the path never names a socket nobody listens on yet; its
    directory must be this user's, and is made mode 0700."""
    path = layout.forked_socket(root)
    directory = os.path.dirname(path)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(1, "not a directory of this user", directory)
    os.chmod(directory, 0o700)
    aside = f"{path}.{os.getpid()}"
    keep: list[int] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)
        listener.bind(forkclient.address(aside, keep))
        listener.listen(BACKLOG)
        os.rename(aside, path)
    except OSError:
        listener.close()
        raise
    finally:
        for fd in keep:
            os.close(fd)
    return listener, os.lstat(path).st_ino


def serve_forever(listener: socket.socket, root: str) -> int:
    """Fork a child per connection until stopped or orphaned; 0."""
    defaults = {s: signal.getsignal(s) for s in SIGNALS}
    parent = os.getppid()

    def stop(signum: int, frame: object) -> None:
        raise Stopped

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    signal.signal(signal.SIGCHLD, lambda signum, frame: reap())
    listener.settimeout(TICK)
    gc.collect()
    gc.freeze()  # the children share the pre-loaded modules' pages
    gc.disable()
    try:
        while os.getppid() == parent:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                if forkclient.peer_uid(conn) != os.geteuid():
                    continue  # closed unanswered: that process runs the command itself
                sys.stdout.flush()
                sys.stderr.flush()
                if os.fork() == 0:
                    child(listener, conn, root, defaults)
    except Stopped:
        return 0
    return 0


def reap() -> None:
    """Collect every child that has ended."""
    with contextlib.suppress(ChildProcessError):
        pid = -1
        while pid:
            pid, _ = os.waitpid(-1, os.WNOHANG)


def child(listener: socket.socket, conn: socket.socket, root: str,
          defaults: dict[signal.Signals, Handler]) -> NoReturn:
    """Serve one request (the forked child); never returns."""
    code = 1
    try:
        listener.close()
        for s, handler in defaults.items():
            signal.signal(s, handler)
        os.setsid()
        code = run_request(conn, root)
    except Exception:
        traceback.print_exc()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
    os._exit(code)


def run_request(conn: socket.socket, root: str) -> int:
    """Take the request from ``conn``, decline it or run it; the exit code."""
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        argv, environ, cwd = receive(conn)
    except (OSError, ValueError):
        return 0  # closed unanswered: the front runs the command itself
    options = None
    with contextlib.suppress(OSError):
        options = adopt(root, argv, environ, cwd)
    if options is None:
        with contextlib.suppress(OSError):
            conn.sendall(forkclient.DECLINED + b"\n")
        return 0
    try:
        conn.sendall(forkclient.ACCEPTED + b"\n")
        fds = descriptors(conn)
    except (OSError, ValueError):
        return 0  # the front gave up waiting: it runs the command itself
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    conn.settimeout(None)
    hang_up_with(conn)
    sys.argv = list(argv)
    crashpoints.rearm()
    time.tzset()
    os.umask(layout.SERVICE_UMASK)
    code = entry.forced_exit(lambda: run_forced(options))
    fcntl.fcntl(conn.fileno(), fcntl.F_SETFL,
                fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) & ~os.O_ASYNC)
    with contextlib.suppress(OSError):
        conn.sendall(b"%s%d\n" % (forkclient.EXIT, code))
    return code


def run_forced(options: dict[str, str]) -> int:
    """``entry.run_forced``, then one debug line: which process served the connection."""
    code = entry.run_forced(options, os.environ)
    LOG.debug("client=%s forced command served by the forced command server (child %d), "
              "exit %d", options.get("--client", "?"), os.getpid(), code)
    return code


def adopt(root: str, argv: Sequence[str], environ: dict[bytes, bytes],
          cwd: bytes) -> dict[str, str] | None:
    """Take the request's working directory and environment; its forced command options
    (``entry.forced_args``), or None when it is not a forced command line for ``root``."""
    options = entry.forced_args(argv)
    if options is None:
        return None
    os.chdir(cwd)
    os.environ.clear()
    for name, value in environ.items():
        os.environb[name] = value
    return options if same_root(root, layout.state_root(options.get("--root"), os.environ)) \
        else None


def descriptors(conn: socket.socket) -> list[int]:
    """The front's ``go`` and the three descriptors it carries; ValueError for anything
    else (the descriptors received are then closed)."""
    data, ancillary, flags, _ = conn.recvmsg(len(forkclient.GO), socket.CMSG_SPACE(FDS * 4),
                                             socket.MSG_WAITALL)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(payload[i:i + 4], sys.byteorder)
                    for i in range(0, len(payload) - len(payload) % 4, 4)]
    if data != forkclient.GO or flags & socket.MSG_CTRUNC or len(fds) != FDS:
        for fd in fds:
            os.close(fd)
        raise ValueError("not go with three descriptors")
    return fds


def receive(conn: socket.socket) -> tuple[list[str], dict[bytes, bytes], bytes]:
    """The request on ``conn``: (argv, environment, working directory). ValueError for
    anything but exactly one well-formed request."""
    data = conn.recv(1 << 16)
    while b"\n" not in data:
        if len(data) > 64:
            raise ValueError("not a forced command request")
        more = conn.recv(64)
        if not more:
            raise ValueError("truncated request")
        data += more
    head, _, body = data.partition(b"\n")
    magic, _, size = head.partition(b" ")
    if magic != forkclient.MAGIC or not size.isdigit() \
            or int(size) > forkclient.MAX_REQUEST:
        raise ValueError("not a forced command request")
    while len(body) < int(size):
        more = conn.recv(int(size) - len(body))
        if not more:
            raise ValueError("truncated request")
        body += more
    fields = body.split(b"\0")
    if len(fields) < 2 or not fields[1].isdigit() or len(fields) < 2 + int(fields[1]):
        raise ValueError("malformed request")
    argc = int(fields[1])
    environ = dict(item.partition(b"=")[::2] for item in fields[2 + argc:])
    if b"" in environ:
        raise ValueError("malformed environment")
    return [os.fsdecode(a) for a in fields[2:2 + argc]], environ, fields[0]


def same_root(root: str, requested: str) -> bool:
    """Whether ``requested`` is this server's state root (the same directory)."""
    try:
        return os.path.samestat(os.stat(root), os.stat(requested))
    except OSError:
        return False


def hang_up_with(conn: socket.socket) -> None:
    """End this process group (rsync included) when the front's end of ``conn`` closes
    before the request ended, as a signal to the forced command process would have. The
    front sends nothing after its request, so ``conn`` becomes readable only then: the
    kernel then sends SIGIO to the group (``O_ASYNC``), whose default action ends each
    process; no thread waits for it."""
    fd = conn.fileno()
    fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    if select.select([fd], [], [], 0)[0]:  # it closed before O_ASYNC was on
        os.killpg(0, signal.SIGIO)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
