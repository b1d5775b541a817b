"""Restore over HTTP: archives, single files and Sugar Journal entries, streamed; the one
implementation behind the JSON API's snapshot routes and the web UI's downloads.

* ``download_archive``: the snapshot or a subtree as tar or zip;
* ``download_file``: one file, with its content type and ``Content-Disposition``;
* ``download_bundle``: one Journal entry as a Journal Entry Bundle (``.xoj``);
* ``journal_listing``: a page of Sugar Journal entries (the JSON API's);
* ``kit``: the stdlib-only restore kit a bare device downloads before it has any
  credentials (``GET /restore/kit``).

Each download checks everything (the snapshot exists, the path stays inside it and
passes through no symlink, the entry exists) before it returns, so an error is still an
HTTP error and not a truncated 200; it returns the response headers (an attachment with
a harmless ASCII ``filename``, the exact name in ``filename*``, and a ``sandbox``
Content-Security-Policy) and the ``Stream`` of its bytes.

Archives are produced by a thread writing into a bounded queue that the WSGI iterable
drains, so memory stays constant and a slow client slows the producer down; a client
that goes away cancels the producer, which releases the snapshot's read lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import queue
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any
from urllib.parse import quote

from xsbackup.clients.registry import Registry
from xsbackup.errors import InvalidName, PathNotFound, SnapshotNotFound
from xsbackup.logs import LOG
from xsbackup.resources import KIT
from xsbackup.restore import access, journal, resolve
from xsbackup.restore import archive as restore
from xsbackup.storage.base import Backend
from xsbackup.store import Store, check_client, check_snapshot_id, check_volume

DOWNLOAD_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; sandbox"),
    ("Referrer-Policy", "same-origin"),
]
_DONE = object()


class _QueueWriter(io.RawIOBase):
    def __init__(self, q: queue.Queue[object], cancelled: threading.Event) -> None:
        self.q = q
        self.cancelled = cancelled

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        while True:
            if self.cancelled.is_set():
                raise BrokenPipeError("the HTTP client went away")
            try:
                self.q.put(data, timeout=0.5)
                return len(data)
            except queue.Full:
                continue


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _producers() -> ThreadPoolExecutor:
    """Producer threads are pooled: a new thread per download made glibc give each its
    own malloc arena, and the serve process kept ~30 MiB per HTTP archive served."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=16, thread_name_prefix="stream"))
        return _POOL[0]


class Stream:
    """The WSGI iterable of a producer thread (``produce(out)``) writing to a queue."""

    def __init__(self, produce: Callable[[IO[bytes]], object], what: str) -> None:
        self.q: queue.Queue[object] = queue.Queue(maxsize=16)
        self.cancelled = threading.Event()
        self.what = what
        writer = io.BufferedWriter(_QueueWriter(self.q, self.cancelled), buffer_size=1 << 16)

        def run() -> None:
            try:
                produce(writer)
                writer.flush()
            except BrokenPipeError:
                LOG.info("http %s: client went away", what)
            except Exception as e:
                LOG.exception("http %s failed", what)
                self._put(e)
            finally:
                self._put(_DONE)

        self._done = threading.Event()
        self._closed = threading.Event()
        self._on_close: list[Callable[[], object]] = []

        def job() -> None:
            try:
                run()
            finally:
                self._done.set()

        _producers().submit(job)

    def _put(self, item: object) -> None:
        while not self.cancelled.is_set():
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            if isinstance(item, bytes):
                yield item

    def when_closed(self, action: Callable[[], object]) -> None:
        """Run ``action`` once the server is done with this stream (sent, or the client
        went away); the server calls ``close`` in either case, HEAD requests included."""
        self._on_close.append(action)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self.cancelled.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.q.get_nowait()
        self._done.wait(timeout=5)
        for action in self._on_close:
            action()


Download = tuple[list[tuple[str, str]], Stream]


# ---- names -------------------------------------------------------------------------------


def shown(name: str) -> str:
    """A name as text a person can read: undecodable bytes as U+FFFD, and control and
    format characters (newlines, bidi overrides) as visible escapes."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def disposition(name: str) -> str:
    """An attachment named ``name``: a harmless ASCII ``filename`` and the exact bytes
    (a name that is not UTF-8 included) in ``filename*``."""
    raw = name.encode("utf-8", "surrogateescape")
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", shown(name))[:100] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8\'\'{quote(raw, safe='')}"


# ---- which snapshot ----------------------------------------------------------------------


def check_snapshot(store: Store, serial: str, volume: str, sid: str) -> None:
    """``serial`` is registered and ``sid`` is a visible snapshot of its ``volume``."""
    check_client(serial)
    check_volume(volume)
    check_snapshot_id(sid)
    if not Registry(store).exists(serial):
        raise SnapshotNotFound(f"no client {serial}")
    if not resolve.exists(store, serial, volume, sid):
        raise SnapshotNotFound(f"no snapshot {sid} of {volume} for {serial}")


def source_of(store: Store, login: str, source: str) -> str:
    """The client whose snapshots ``login`` reads: itself, or (``?from=``) an alias."""
    return restore.check_readable(Registry(store), login, source or login)


def open_datastore(snap_fd: int, path: str) -> int:
    """The Sugar datastore at ``path`` in the snapshot; the caller closes the result."""
    fd = access.open_dir(snap_fd, access.split_path(path))
    if journal.detect_layout(fd) is None:
        os.close(fd)
        raise PathNotFound(f"{shown(path) or 'the snapshot'} is not a Sugar datastore")
    return fd


# ---- downloads (streamed; every check happens before the 200) -------------------------------


def download_file(store: Store, serial: str, volume: str, sid: str,
                  path: str) -> Download:
    """One regular file of the snapshot, with its content type and name."""
    check_snapshot(store, serial, volume, sid)
    snap = access.OpenSnapshot(store, serial, volume, sid)
    try:
        fd, st, _ = access.open_file(snap.fd, path)
    except BaseException:
        snap.close()
        raise
    name = path.rsplit("/", 1)[-1]

    def send(out: IO[bytes]) -> None:
        try:
            while chunk := os.read(fd, access.CHUNK):
                out.write(chunk)
        finally:
            os.close(fd)
            snap.close()

    return [("Content-Type", restore.content_type(shown(name))),
            ("Content-Length", str(st.st_size)),
            ("Content-Disposition", disposition(name)), *DOWNLOAD_HEADERS], \
        Stream(send, f"client={serial} volume={volume} snapshot={sid} file")


def download_archive(store: Store, serial: str, volume: str, sid: str, path: str,
                     fmt: str) -> Download:
    """The snapshot, or its directory ``path``, as a tar or zip archive."""
    check_snapshot(store, serial, volume, sid)
    snap = access.OpenSnapshot(store, serial, volume, sid)
    try:
        os.close(access.open_dir(snap.fd, access.split_path(path)))
    except BaseException:
        snap.close()
        raise
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    name = f"{serial}-{volume}-{sid}" + (f"-{tail}" if tail else "") + f".{fmt}"

    def archive(out: IO[bytes]) -> None:
        try:
            (restore.write_tar if fmt == "tar" else restore.write_zip)(snap.fd, path, out)
        finally:
            snap.close()

    kind = "application/x-tar" if fmt == "tar" else "application/zip"
    return [("Content-Type", kind), ("Content-Disposition", disposition(name)),
            *DOWNLOAD_HEADERS], \
        Stream(archive, f"client={serial} volume={volume} snapshot={sid} archive")


def download_manifest(store: Store, storage: Backend, serial: str, volume: str,
                      sid: str) -> Download:
    """The snapshot's manifest as the SSH ``manifest`` verb sends it: one JSON object per
    line, each regular file with its ``blake2b`` content digest."""
    import json

    check_snapshot(store, serial, volume, sid)

    def lines(out: IO[bytes]) -> None:
        for entry in restore.manifest(store, serial, volume, sid, storage):
            out.write(json.dumps(entry).encode("ascii") + b"\n")

    return [("Content-Type", "application/x-ndjson"), *DOWNLOAD_HEADERS], \
        Stream(lines, f"client={serial} volume={volume} snapshot={sid} manifest")


def download_bundle(store: Store, serial: str, volume: str, sid: str, path: str,
                    uid: str) -> Download:
    """The Journal entry ``uid`` of the datastore at ``path`` as a ``.xoj`` bundle."""
    check_snapshot(store, serial, volume, sid)
    if not journal.UID_RE.fullmatch(uid):
        raise InvalidName(f"invalid Journal entry uid {uid[:80]!r}")
    snap = access.OpenSnapshot(store, serial, volume, sid)
    try:
        root = open_datastore(snap.fd, path)
    except BaseException:
        snap.close()
        raise
    try:
        meta = journal.read_metadata(root, uid)
    except journal.JournalError:
        os.close(root)
        snap.close()
        raise PathNotFound(f"no Journal entry {uid} in {volume}/{sid}") from None
    except BaseException:
        os.close(root)
        snap.close()
        raise

    def bundle(out: IO[bytes]) -> None:
        try:
            journal.write_bundle(root, uid, out)
        finally:
            os.close(root)
            snap.close()

    return [("Content-Type", journal.XOJ_MIME),
            ("Content-Disposition", disposition(journal.entry_filename({**meta, "uid": uid}))),
            *DOWNLOAD_HEADERS], Stream(bundle, f"client={serial} journal entry {uid}")


def journal_listing(store: Store, serial: str, volume: str, sid: str, offset: int,
                    limit: int, query: str | None) -> dict[str, Any]:
    """One page of the Journal entries at the snapshot's root, for the JSON API."""
    check_snapshot(store, serial, volume, sid)
    with access.OpenSnapshot(store, serial, volume, sid) as snap:
        try:
            entries, more = journal.list_entries(snap.fd, offset, limit, query)
        except journal.NotADatastore:
            raise PathNotFound(f"{volume}/{sid} is not a Sugar datastore") from None
    return {"offset": offset, "limit": limit, "more": more,
            "entries": [dataclasses.asdict(e) for e in entries]}


def kit() -> bytes:
    return KIT.read_bytes()
