"""The forced command's fast path: hand the connection to ``serve``'s pre-loaded server.

``serve`` runs ``cli.forkserver``: a process that has already imported everything the
forced command needs, listening on ``<root>/run/forced.sock`` (``layout.forked_socket``).
``cli.entry`` calls ``forward`` for a forced command line before it imports anything
heavy. It connects with ``_socket`` alone (``socket.py`` imports ``enum``), checks that
the server runs as this user, and sends what the forced command would have read itself:
its argument list, its environment and its working directory, then, once the server
takes it, its descriptors 0, 1 and 2 (``SCM_RIGHTS``). The server forks a child that
runs the very code the in-process path runs (``cli.entry.forced_exit``) on those
descriptors and answers its exit code.

``forward`` returns only when the in-process path must run instead, which is then
unchanged: no socket, nobody listening, a server of another user, or a server that says
the request is not its own (another state root). Once the server has said it runs the
request, the exit code is the server's; a connection that ends without one is one line
and ``ServerError``'s exit code.

The protocol (``MAGIC`` names its version): the request is ``MAGIC SP length LF`` and
``length`` bytes of NUL-separated fields (the working directory, the number of
arguments, the arguments, then ``NAME=value`` for each environment variable); the server
answers ``ok LF`` (it will run it) or ``no LF`` (run it yourself); after ``ok`` the front
sends ``go LF`` with the three descriptors, and the server runs it and answers ``exit N
LF``. A front that has no answer within ``ANSWER_SECONDS`` (a stopped or overloaded
server) closes the connection instead and runs the command itself: the server's child
runs nothing without ``go``, so a command never runs twice, and no descriptor of the
front's waits in a queue nobody reads (it would keep the client's stream open).
"""

from __future__ import annotations

import _socket
import os
import sys

from xsbackup import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

MAGIC = b"xsbackup-forced-1"
ACCEPTED = b"ok"
DECLINED = b"no"
GO = b"go\n"  # the front's answer to ACCEPTED: it will not run the command itself
ANSWER_SECONDS = 5.0  # a server that says neither ok nor no by then is not waited for
EXIT = b"exit "
MAX_REQUEST = 1 << 20  # an environment this large is not sshd's
UCRED = 12  # struct ucred: pid, uid, gid as C ints
UNIX_PATH_MAX = 107  # sun_path, less its terminating NUL


def encode(argv: Sequence[str], environ: dict[bytes, bytes], cwd: bytes) -> bytes:
    """The request for ``argv`` run with ``environ`` in ``cwd``."""
    fields = [cwd, str(len(argv)).encode(), *(os.fsencode(a) for a in argv),
              *(k + b"=" + v for k, v in environ.items())]
    body = b"\0".join(fields)
    return MAGIC + b" " + str(len(body)).encode() + b"\n" + body


def peer_uid(sock: _socket.socket) -> int:
    """The user id of the process at the other end of a unix socket (``SO_PEERCRED``)."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, UCRED)
    return int.from_bytes(cred[4:8], sys.byteorder)


def address(path: str, keep: list[int]) -> str:
    """``path`` as a unix socket address: through ``/proc/self/fd`` when it is longer
    than ``sun_path`` holds (its directory's descriptor is appended to ``keep``)."""
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        return path
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    keep.append(fd)
    return f"/proc/self/fd/{fd}/{name}"


def read_line(sock: _socket.socket, pending: bytearray) -> bytes | None:
    """The next line from ``sock`` (without its LF), or None when it ends first."""
    while b"\n" not in pending:
        chunk = sock.recv(256)
        if not chunk:
            return None
        pending += chunk
        if len(pending) > 4096:
            return None
    line, _, rest = bytes(pending).partition(b"\n")
    pending[:] = rest
    return line


def forward(root: str, argv: Sequence[str]) -> None:
    """Have ``serve``'s server run this forced command for the state root ``root`` and
    end the process with its exit code; return at once when it cannot (the caller then
    runs it itself)."""
    keep: list[int] = []
    pending = bytearray()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(address(layout.forked_socket(root), keep))
        accepted = peer_uid(sock) == os.geteuid()
        if accepted:
            sock.settimeout(ANSWER_SECONDS)
            sock.sendall(encode(argv, dict(os.environb), os.getcwdb()))
            accepted = read_line(sock, pending) == ACCEPTED
        if accepted:  # from here on the server runs it, and this process never
            sock.settimeout(None)
            sock.sendmsg([GO], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                 b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2)))])
    except OSError:
        accepted = False
    finally:
        for fd in keep:
            os.close(fd)
    if not accepted:
        sock.close()
        return
    try:
        line = read_line(sock, pending)
    except OSError:
        line = None
    except KeyboardInterrupt:  # as the in-process path ends on SIGINT
        sys.stderr.write("\naborted\n")
        sys.stderr.flush()
        os._exit(130)
    if line is None or not line.startswith(EXIT) or not line[len(EXIT):].isdigit():
        from xsbackup.errors import ServerError

        sys.stderr.write("xsbackup: server error: the forced command's server ended "
                         "without an exit status; the administrator can find it in the "
                         "log\n")
        sys.stderr.flush()
        os._exit(ServerError.exit_code)
    os._exit(int(line[len(EXIT):]))
