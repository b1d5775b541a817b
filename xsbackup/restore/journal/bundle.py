"""Sugar Journal entries as ``.xoj`` bundles, and their download names.

See ds-backup-protocol.md, "Journal Entry Bundle (.xoj)". The zip is written as it is
produced to any stream (it need not seek); data and previews are copied in 1 MiB chunks,
so memory stays constant whatever the file size.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import time
import unicodedata
import zipfile
from collections.abc import Mapping
from typing import Any, Protocol

from xsbackup.errors import EntryNotFound, JournalError
from xsbackup.restore.access import CHUNK, try_open_dir, try_open_file
from xsbackup.restore.journal.entries import (
    UID_RE,
    Entry,
    check_uid,
    require_layout,
    v0_metadata,
    v1_metadata,
)

XOJ_MIME = "application/vnd.olpc-journal-entry"


# ---------------------------------------------------------------- bundles


class Writable(Protocol):
    """What ``write_bundle`` writes to: a binary file, a pipe, a socket file, a WSGI sink."""

    def write(self, data: bytes, /) -> int | None: ...

    def flush(self) -> None: ...


class _Sink:
    """What ZipFile writes into.

    ``tell()`` counts, and there is no ``seek()``: ZipFile never seeks the caller's
    stream and always writes data descriptors, whatever ``out`` is. Short writes are
    completed. After any failure it swallows everything, so ZipFile's clean-up on the
    way out cannot append a central directory that would make a cut archive look whole."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self._pos = 0
        self.discard = False

    def tell(self) -> int:
        return self._pos

    def write(self, data: bytes) -> int:
        n = len(data)
        if self.discard:
            return n
        try:
            while data:
                done = self._out.write(data)
                if done is None:  # a duck-typed sink that returns nothing took it all
                    break
                if done <= 0:
                    raise JournalError("the output stream accepted no bytes")
                data = data[done:]
        except BaseException:
            self.discard = True
            raise
        self._pos += n
        return n

    def flush(self) -> None:
        if not self.discard:
            self._out.flush()

    def close(self) -> None:
        """ZipFile never closes a stream it was given; ``out`` stays the caller's."""


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    try:
        t = time.localtime(mtime)
    except (OverflowError, OSError, ValueError):
        return (1980, 1, 1, 0, 0, 0)
    if t.tm_year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    if t.tm_year > 2107:
        return (2107, 12, 31, 23, 59, 58)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _add_member(zf: zipfile.ZipFile, sink: _Sink, name: str, src: bytes | int,
                mtime: float) -> None:
    """Add ``src`` (bytes, or a descriptor copied in CHUNK pieces) as ``name``."""
    info = zipfile.ZipInfo(name, _zip_time(mtime))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    # The expected size decides whether the member needs ZIP64 fields.
    info.file_size = len(src) if isinstance(src, bytes) else os.fstat(src).st_size
    with zf.open(info, "w") as w:
        try:
            if isinstance(src, bytes):
                w.write(src)
                return
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := os.readv(src, [buf]):
                w.write(view[:n])
        except BaseException:
            sink.discard = True  # before w.close() writes the member's data descriptor
            raise


def write_bundle(root_fd: int, uid: str, out: Writable) -> None:
    """Write the entry as a ``.xoj`` zip (``XOJ_MIME``) to ``out``, which need not seek.

    Members: ``<uid>/_metadata.json`` (``read_metadata``), ``<uid>/<uid>`` (the data,
    left out if there is none) and ``<uid>/preview/<uid>`` (if there is a non-empty
    preview). Everything is opened before the first byte is written, so EntryNotFound
    and JournalError leave ``out`` untouched. A failure later propagates with the
    archive unfinished (no central directory): the caller must abort its response.
    """
    check_uid(uid)
    layout = require_layout(root_fd)
    with contextlib.ExitStack() as stack:

        def keep(fd: int | None) -> int | None:
            if fd is not None:
                stack.callback(os.close, fd)
            return fd

        if layout == 0:
            sfd = keep(try_open_dir("store", root_fd))
            found = v0_metadata(sfd, uid) if sfd is not None else None
            if sfd is None or found is None:
                raise EntryNotFound(f"no journal entry {uid}")
            meta, meta_mtime = found
            meta.pop("preview", None)
            data = keep(try_open_file(uid, sfd))
            pfd = keep(try_open_dir("preview", sfd))
            preview = keep(try_open_file(uid, pfd)) if pfd is not None else None
        else:
            pfx = keep(try_open_dir(uid[:2], root_fd))
            ufd = keep(try_open_dir(uid, pfx)) if pfx is not None else None
            mfd = keep(try_open_dir("metadata", ufd)) if ufd is not None else None
            if ufd is None or mfd is None:
                raise EntryNotFound(f"no journal entry {uid}")
            meta, meta_mtime = v1_metadata(mfd), os.fstat(mfd).st_mtime
            data = keep(try_open_file("data", ufd))
            preview = keep(try_open_file("preview", mfd))
        if preview is not None and os.fstat(preview).st_size == 0:
            preview = None
        # ASCII JSON: Sugar reads _metadata.json in text mode with the locale's encoding.
        try:
            payload = json.dumps(meta, sort_keys=True).encode("ascii")
        except (ValueError, RecursionError):
            raise JournalError(f"metadata of {uid} cannot be written as JSON") from None

        sink = _Sink(out)
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
            try:
                _add_member(zf, sink, f"{uid}/_metadata.json", payload, meta_mtime)
                if data is not None:
                    _add_member(zf, sink, f"{uid}/{uid}", data, os.fstat(data).st_mtime)
                if preview is not None:
                    _add_member(zf, sink, f"{uid}/preview/{uid}", preview,
                                os.fstat(preview).st_mtime)
            except BaseException:
                sink.discard = True
                raise


# ---------------------------------------------------------------- download names

_UNSAFE_CHARS = re.compile(r'[/\\<>:"|?*]')
_DROPPED = frozenset({"Cf", "Cs", "Cn"})  # format (bidi overrides), surrogates, unassigned
_SPACED = frozenset({"Cc", "Zl", "Zp"})  # control characters and line breaks
_RESERVED = frozenset({"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt")
                                                       for i in range(1, 10)})
NAME_MAX = 120  # characters of title kept


def entry_filename(entry_or_meta: Entry | Mapping[str, Any]) -> str:
    """A download name ``<title>.xoj``, safe on any system; the uid if the title is empty."""
    if isinstance(entry_or_meta, Entry):
        title: Any = entry_or_meta.title
        uid: Any = entry_or_meta.uid
    else:
        title, uid = entry_or_meta.get("title"), entry_or_meta.get("uid")
    name = _clean_title(title) if isinstance(title, str) else ""
    if not name:
        name = uid if isinstance(uid, str) and UID_RE.fullmatch(uid) else "journal-entry"
    return f"{name}.xoj"


def _clean_title(title: str) -> str:
    chars = []
    for ch in unicodedata.normalize("NFC", title):
        category = unicodedata.category(ch)
        if category in _DROPPED:
            continue
        chars.append(" " if category in _SPACED or ch.isspace() else ch)
    name = _UNSAFE_CHARS.sub("_", "".join(chars))
    name = " ".join(name.split())[:NAME_MAX].strip(" .")
    if name.split(".")[0].strip().casefold() in _RESERVED:
        name = "_" + name
    return name

