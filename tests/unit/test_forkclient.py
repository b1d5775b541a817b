"""The forced command server's request: what the front sends is what the server takes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from xsbackup.cli import forkclient, forkserver


def send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                           b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))])


def test_a_request_arrives_whole_with_its_descriptors() -> None:
    argv = ["--root", "/srv/x", "ssh-command", "--client", "SN1"]
    environ = {b"SSH_ORIGINAL_COMMAND": b"rsync --server . a=b/", b"EMPTY": b"",
               b"LANG": b"C.UTF-8"}
    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.sendall(forkclient.encode(argv, environ, b"/home/x"))
        got_argv, got_env, cwd = forkserver.receive(b)
        send(a, forkclient.GO, [r, w, w])  # once the server said ok
        fds = forkserver.descriptors(b)
    try:
        assert (got_argv, got_env, cwd) == (argv, environ, b"/home/x")
        assert len(fds) == 3
        assert not {r, w} & set(fds)  # the server's own copies
        os.write(fds[1], b"through")
        assert os.read(r, 16) == b"through"
    finally:
        for fd in (r, w, *fds):
            os.close(fd)


@pytest.mark.parametrize(("data", "why"), [
    (b"xsbackup-forced-0 3\na\x000", "not a forced command request"),  # another protocol
    (b"xsbackup-forced-1 99999999\n", "not a forced command request"),  # over the bound
    (b"xsbackup-forced-1 5\n/\x009\x00a", "malformed request"),  # fewer arguments
    (b"xsbackup-forced-1 7\n/\x000\x00=x\x00", "malformed environment"),  # no name
], ids=["magic", "size", "argc", "env"])
def test_anything_else_is_refused(data: bytes, why: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.sendall(data)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ValueError, match=why):
            forkserver.receive(b)


@pytest.mark.parametrize(("data", "count"), [(forkclient.GO, 2), (b"no\n", 3)],
                         ids=["two-descriptors", "not-go"])
def test_go_comes_with_three_descriptors(data: bytes, count: int) -> None:
    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send(a, data, [r] * count)
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ValueError, match="not go with three descriptors"):
            forkserver.descriptors(b)
        assert set(os.listdir("/proc/self/fd")) <= before
    os.close(r)
    os.close(w)


def test_a_path_longer_than_sun_path_is_reached_through_its_directory(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "forced.sock")
    assert len(path) > forkclient.UNIX_PATH_MAX
    keep: list[int] = []
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as c:
        listener.bind(forkclient.address(path, keep))
        listener.listen(1)
        c.connect(forkclient.address(path, keep))
        assert forkclient.peer_uid(c) == os.geteuid()
    for fd in keep:
        os.close(fd)
    assert os.path.exists(path)
