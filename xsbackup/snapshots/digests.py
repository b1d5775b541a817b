"""Content digests for manifests (``snapshots.manifest``) and their checks: BLAKE2b-256
(what ``b2sum -l 256`` prints), read into one reused buffer a thread, with few Python
objects a file, on threads when there is enough data (``hashlib`` releases the GIL while
it hashes a large buffer; for small files it would only add overhead)."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Reading a file to hash it is not an access: no atime update (with relatime, the first
# read after a change would otherwise write every file's inode). Allowed to the file's
# owner (the service account writes what it stores) and to root; refused to others.
O_NOATIME = getattr(os, "O_NOATIME", 0)
HASH_THREADS = 2
THREADS_FROM_BYTES = 8 << 20  # below this much content, threads only add overhead


def new_hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=32)


_BUFFERS = threading.local()  # one read buffer a thread, reused from file to file


def _buffer() -> bytearray:
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None:
        buf = _BUFFERS.buf = bytearray(1 << 20)
    return buf


def _read_on(fd: int, buf: bytearray, h: hashlib.blake2b, n: int) -> tuple[str, int]:
    """``h`` (over the ``n`` bytes read so far) fed the rest of ``fd``: (hex digest,
    bytes read in all)."""
    view = memoryview(buf)
    while got := os.readv(fd, [buf]):
        h.update(view[:got])
        n += got
    return h.hexdigest(), n


def digest_fd(fd: int, size: int = -1) -> tuple[str, int]:
    """(hex digest, bytes read) of the open file ``fd`` from its current offset. With
    ``size`` (the regular file's size from its ``lstat``, smaller than the buffer), a
    first read of exactly that many bytes is taken as the whole file without reading
    on to the end (a file of an unfinished tree that nothing writes; a later ``check``
    reads it whole)."""
    buf = _buffer()
    got = os.readv(fd, [buf])
    h = hashlib.blake2b(memoryview(buf)[:got], digest_size=32)
    if got == size < len(buf):
        return h.hexdigest(), got
    return _read_on(fd, buf, h, got)


def _open(name: str, dir_fd: int | None) -> int:
    """``name`` (below ``dir_fd``) opened as ``digest_at`` says."""
    try:
        return os.open(name, O_READ | O_NOATIME, dir_fd=dir_fd)
    except PermissionError:  # not the file's owner: O_NOATIME is refused (EPERM)
        return os.open(name, O_READ, dir_fd=dir_fd)


def digest_at(name: str, dir_fd: int | None = None, size: int = -1) -> tuple[str, int]:
    """(hex digest, bytes read) of the file ``name`` (below ``dir_fd``), never following
    a symlink in its last component, nor updating its atime where the file's owner
    reads. It is opened non-blocking, so a FIFO put in its place fails to read rather
    than wait (a regular file reads as it always does)."""
    fd = _open(name, dir_fd)
    try:
        return digest_fd(fd, size)
    finally:
        os.close(fd)


def _digest_each(files: list[tuple[str, int]], dir_fd: int | None) -> list[tuple[str, int]]:
    """``digest_at`` of each file in turn, its steps inlined: for a promotion's
    thousand small files the calls cost as much as the reads."""
    buf = _buffer()
    view, bufs, limit = memoryview(buf), [buf], len(buf)
    blake2b, readv, close = hashlib.blake2b, os.readv, os.close
    out = []
    for name, size in files:
        fd = _open(name, dir_fd)
        try:
            got = readv(fd, bufs)
            h = blake2b(view[:got], digest_size=32)
            out.append((h.hexdigest(), got) if got == size < limit else
                       _read_on(fd, buf, h, got))
        finally:
            close(fd)
    return out


def digest_all(files: list[tuple[str, int]],
               dir_fd: int | None = None) -> list[tuple[str, int]]:
    """``digest_at`` of each ``(path below dir_fd, size)``, in order; on
    ``HASH_THREADS`` threads when the files hold ``THREADS_FROM_BYTES`` or more
    together."""
    if sum(size for _, size in files) < THREADS_FROM_BYTES or len(files) < 2:
        return _digest_each(files, dir_fd)
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="manifest") as pool:
        return list(pool.map(lambda f: digest_at(f[0], dir_fd, f[1]), files))
