"""Restore over HTTP: archives, single files and Sugar Journal entries, streamed.

Routes, below ``/api/v1/clients/<SN>/volumes/<V>/snapshots/<ID>/`` (authenticated by the
JSON API), each taking ``?from=OLD`` to read an aliased client's snapshot as ``SN``:

* ``archive.tar`` / ``archive.zip`` ``?path=``: the snapshot or a subtree;
* ``file?path=``: one file, with its content type and ``Content-Disposition``;
* ``journal?offset=&limit=&q=``: a page of Sugar Journal entries;
* ``journal/<uid>.xoj``: one entry as a Journal Entry Bundle.

And ``GET /restore/kit``, without authentication: the stdlib-only restore kit a bare
device downloads before it has any credentials.

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, quote

from xsbackup.clients.registry import Registry
from xsbackup.config import Settings
from xsbackup.errors import PathNotFound
from xsbackup.logs import LOG
from xsbackup.resources import KIT
from xsbackup.restore import access, resolve
from xsbackup.restore import archive as restore
from xsbackup.store import Store, check_snapshot_id, check_volume

_UID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
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

    def close(self) -> None:
        self.cancelled.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self.q.get_nowait()
        self._done.wait(timeout=5)


def _disposition(name: str) -> str:
    ascii_name = re.sub(r'[^A-Za-z0-9._-]', "_", name)[:100] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def source_of(store: Store, login: str, query: dict[str, list[str]]) -> str:
    src = query.get("from", [""])[0]
    return restore.check_readable(Registry(store), login, src or login)


def snapshot_route(settings: Settings, store: Store, environ: dict[str, Any], login: str,
                   volume: str, sid: str, rest: list[str]) -> tuple[int, list[tuple[str, str]],
                                                                   bytes | Stream]:
    """Serve one snapshot sub-resource: (status, headers, body or stream)."""
    query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
    client = source_of(store, login, query)
    check_volume(volume)
    check_snapshot_id(sid)
    if not resolve.exists(store, client, volume, sid):
        from xsbackup.errors import SnapshotNotFound

        raise SnapshotNotFound(f"no snapshot {sid} of {volume} for {client}")
    path = query.get("path", [""])[0]
    access.split_path(path)  # refuse '..' and absolute paths before anything opens
    match rest:
        case ["archive.tar"] | ["archive.zip"]:
            fmt = rest[0].rsplit(".", 1)[1]
            name = f"{client}-{volume}-{sid}" + (f"-{Path(path).name}" if path else "")
            # Open and check everything before the 200 goes out: errors stay HTTP errors.
            snap = access.OpenSnapshot(store, client, volume, sid)
            try:
                os.close(access.open_dir(snap.fd, access.split_path(path)))
            except BaseException:
                snap.close()
                raise

            def archive(out: IO[bytes]) -> None:
                try:
                    (restore.write_tar if fmt == "tar" else restore.write_zip)(snap.fd, path, out)
                finally:
                    snap.close()

            stream = Stream(archive, f"client={client} volume={volume} snapshot={sid} archive")
            kind = "application/x-tar" if fmt == "tar" else "application/zip"
            return 200, [("Content-Type", kind),
                         ("Content-Disposition", _disposition(f"{name}.{fmt}"))], stream
        case ["file"]:
            snap = access.OpenSnapshot(store, client, volume, sid)
            try:
                fd, st, _ = access.open_file(snap.fd, path)
            except BaseException:
                snap.close()
                raise
            name = os.fsdecode(path.rsplit("/", 1)[-1].encode(errors="surrogateescape"))

            def send(out: IO[bytes]) -> None:
                try:
                    while chunk := os.read(fd, access.CHUNK):
                        out.write(chunk)
                finally:
                    os.close(fd)
                    snap.close()

            return 200, [("Content-Type", restore.content_type(name)),
                         ("Content-Length", str(st.st_size)),
                         ("Content-Disposition", _disposition(name))], Stream(send, "file")
        case ["journal"]:
            from xsbackup.restore import journal

            offset = int(query.get("offset", ["0"])[0] or 0)
            limit = min(int(query.get("limit", ["100"])[0] or 100), 1000)
            q = query.get("q", [""])[0] or None
            with access.OpenSnapshot(store, client, volume, sid) as snap:
                try:
                    entries, more = journal.list_entries(snap.fd, offset, limit, q)
                except journal.NotADatastore:
                    raise PathNotFound(f"{volume}/{sid} is not a Sugar datastore") \
                        from None
            import orjson

            body = orjson.dumps({"offset": offset, "limit": limit, "more": more,
                                 "entries": [dataclasses.asdict(e) for e in entries]})
            return 200, [("Content-Type", "application/json")], body
        case ["journal", bundle] if bundle.endswith(".xoj") and \
                _UID_RE.fullmatch(bundle[:-4]):
            from xsbackup.restore import journal

            uid = bundle[:-4]
            snap = access.OpenSnapshot(store, client, volume, sid)
            try:
                meta = journal.read_metadata(snap.fd, uid)
            except journal.JournalError:
                snap.close()
                raise PathNotFound(f"no Journal entry {uid} in {volume}/{sid}") \
                    from None
            except BaseException:
                snap.close()
                raise

            def bundle_out(out: IO[bytes]) -> None:
                try:
                    journal.write_bundle(snap.fd, uid, out)
                finally:
                    snap.close()

            return 200, [("Content-Type", journal.XOJ_MIME),
                         ("Content-Disposition",
                          _disposition(journal.entry_filename({**meta, "uid": uid})))], \
                Stream(bundle_out, f"client={client} journal entry {uid}")
    raise PathNotFound("no such resource")


def kit() -> bytes:
    return KIT.read_bytes()
