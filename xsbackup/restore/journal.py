"""Sugar Journal entries inside a ``datastore`` snapshot, and their ``.xoj`` bundles.

See ds-backup-protocol.md, "Datastore layouts" and "Journal Entry Bundle (.xoj)".

Every function takes ``root_fd``, an open descriptor of the datastore directory of one
snapshot (the directory holding ``store/`` or ``version``). Snapshots are written by
``rsync --fake-super``, which is a client-controlled tree, so:

* every component is opened relative to a directory descriptor with ``O_NOFOLLOW``
  (``O_DIRECTORY`` for directories); a real symlink is never followed, it is absent;
* a symlink of the client is stored as a *regular file* holding the link target, marked
  by the xattr ``user.rsync.%stat`` = ``"120777 major,minor uid:gid"``. A file whose
  recorded mode is not a regular file (symlink, device, fifo, socket) is absent too:
  its content is not the client's file content;
* ``root_fd`` is never read from directly: directory listings reopen ``"."`` so that
  concurrent listings (threads of the HTTP server) never share a directory offset.

Nothing is written to the snapshot. Metadata values are read with size caps; data and
previews are streamed in 1 MiB chunks, so memory stays constant whatever the file size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import stat
import time
import unicodedata
import zipfile
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

LOG = logging.getLogger(__name__)

XOJ_MIME = "application/vnd.olpc-journal-entry"
UID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")

CHUNK = 1 << 20
LIST_VALUE_MAX = 64 << 10  # a listed field (title, activity...) larger than this is None
VALUE_MAX = 4 << 20  # a metadata value larger than this is left out of read_metadata
METADATA_MAX = 16 << 20  # total text metadata per entry; also caps a v0 .metadata file
KEYS_MAX = 4096  # metadata keys per entry
FAKE_STAT_XATTR = "user.rsync.%stat"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Errors that mean "not there as the kind of thing we want": missing, a (real) symlink
# refused by O_NOFOLLOW (ELOOP, or EMLINK on some systems), a file where a directory was
# expected, or a socket. Anything else (EACCES, EIO) is a server problem and propagates.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EMLINK, errno.ENXIO})
_NO_XATTR = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP})
_LIST_KEYS = ("title", "activity", "mime_type", "mtime", "timestamp")


class JournalError(ValueError):
    """A Journal entry request could not be served."""


class EntryNotFound(JournalError, LookupError):
    """No such Journal entry in this snapshot."""


class NotADatastore(JournalError):
    """The directory is not a Sugar datastore."""


@dataclass(frozen=True)
class Entry:
    uid: str
    title: str | None
    activity: str | None
    mime_type: str | None
    mtime: str | None  # as stored, e.g. "2009-06-01T10:00:00.000000"
    timestamp: int | None
    size: int  # bytes of data, 0 if there is none
    has_preview: bool
    layout: int  # 0 (store/) or 1 (version 1 and later)


# ---------------------------------------------------------------- safe file access


def _open_dir(name: str, dir_fd: int) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _ABSENT:
            return None
        raise


def _fake_mode_ok(fd: int) -> bool:
    """False if fake-super recorded anything but a regular file (or garbage)."""
    try:
        value = os.getxattr(fd, FAKE_STAT_XATTR)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return True
        raise
    try:
        mode = int(value.split(b" ", 1)[0], 8)
    except ValueError:
        return False
    return stat.S_ISREG(mode)


def _open_file(name: str, dir_fd: int) -> int | None:
    """A descriptor of a real regular file whose recorded mode is a regular file."""
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in _ABSENT:
            return None
        raise
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode) and _fake_mode_ok(fd):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _file_size(name: str, dir_fd: int | None) -> int | None:
    if dir_fd is None:
        return None
    fd = _open_file(name, dir_fd)
    if fd is None:
        return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _read_fd(fd: int, cap: int) -> bytes | None:
    """The rest of the file, or None if it is longer than ``cap`` bytes."""
    if os.fstat(fd).st_size > cap:
        return None
    parts: list[bytes] = []
    got = 0
    while got <= cap:
        part = os.read(fd, min(CHUNK, cap + 1 - got))
        if not part:
            return b"".join(parts)
        parts.append(part)
        got += len(part)
    return None  # it grew past the cap while we read


def _read_capped(name: str, dir_fd: int, cap: int) -> bytes | None:
    """The whole file, or None if it is absent or longer than ``cap`` bytes."""
    fd = _open_file(name, dir_fd)
    if fd is None:
        return None
    try:
        return _read_fd(fd, cap)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _scan(dir_fd: int | None) -> Iterator[Iterator[os.DirEntry[str]]]:
    """List ``dir_fd`` (nothing if None) through a fresh descriptor: its directory offset
    is ours alone, whoever else lists the same directory."""
    if dir_fd is None:
        yield iter(())
        return
    fd = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            yield it
    finally:
        os.close(fd)


@contextlib.contextmanager
def _dir(name: str, dir_fd: int | None) -> Iterator[int | None]:
    """``name`` opened as a directory below ``dir_fd``; None if absent (or dir_fd is)."""
    fd = None if dir_fd is None else _open_dir(name, dir_fd)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------- layouts


def detect_layout(root_fd: int) -> int | None:
    """0 if ``store/`` exists (Sugar 0.82); else the number in ``version`` (1+, current
    Sugar writes 6); else 1 if a ``<2 hex>/<uid>/metadata/`` directory exists; else None."""
    store = _open_dir("store", root_fd)
    if store is not None:
        os.close(store)
        return 0
    raw = _read_capped("version", root_fd, 32)
    if raw is not None:
        text = raw.strip()
        if text.isdigit() and len(text) <= 9 and int(text) >= 1:
            return int(text)
    with contextlib.closing(_v1_uids(root_fd, hex_prefix=True)) as uids:
        return None if next(uids, None) is None else 1


def _require_layout(root_fd: int) -> int:
    """0 or 1 (every version from 1 on is read alike); NotADatastore otherwise."""
    layout = detect_layout(root_fd)
    if layout is None:
        raise NotADatastore()
    return min(layout, 1)


def _is_dir(name: str, dir_fd: int | None) -> bool:
    if dir_fd is None:
        return False
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError as e:
        if e.errno in _ABSENT:
            return False
        raise


def _v1_uids(root_fd: int, hex_prefix: bool = False) -> Generator[str, None, None]:
    """Uids having ``<uid[:2]>/<uid>/metadata/``, in directory order.

    Only names of at most two characters can be prefixes, so ``index/``, ``checksums/``,
    ``version`` and ``index_updated`` are never looked into."""
    with _scan(root_fd) as it:
        for d in it:
            prefix = d.name
            if len(prefix) > 2 or not UID_RE.fullmatch(prefix):
                continue
            if hex_prefix and not _HEX2.fullmatch(prefix):
                continue
            if not d.is_dir(follow_symlinks=False):
                continue
            with _dir(prefix, root_fd) as pfd, _scan(pfd) as uids:
                for u in uids:
                    uid = u.name
                    if uid[:2] != prefix or not UID_RE.fullmatch(uid):
                        continue
                    with _dir(uid, pfd) as ufd:
                        if _is_dir("metadata", ufd):
                            yield uid


def _v0_uids(root_fd: int) -> Generator[str, None, None]:
    """Uids having a usable ``store/<uid>.metadata`` file, in directory order."""
    with _dir("store", root_fd) as sfd, _scan(sfd) as it:
        for d in it:
            uid = d.name.removesuffix(".metadata")
            if sfd is None or uid == d.name or not UID_RE.fullmatch(uid):
                continue
            fd = _open_file(d.name, sfd)
            if fd is not None:
                os.close(fd)
                yield uid


def _uids(root_fd: int, layout: int) -> Generator[str, None, None]:
    return _v0_uids(root_fd) if layout == 0 else _v1_uids(root_fd)


@contextlib.contextmanager
def _entry_dir(root_fd: int, uid: str) -> Iterator[int | None]:
    """The open ``<uid[:2]>/<uid>`` directory of a version 1+ entry."""
    with _dir(uid[:2], root_fd) as pfd, _dir(uid, pfd) as ufd:
        yield ufd


# ---------------------------------------------------------------- metadata


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", errors="replace")


def _field(value: Any) -> str | None:
    """A listed field from a v0 JSON value: strings as they are, numbers as text."""
    if isinstance(value, str):
        return value if len(value) <= LIST_VALUE_MAX else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _timestamp(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _json_object(raw: bytes | None) -> dict[str, Any]:
    """A v0 ``.metadata`` file: its JSON object, or {} if it is anything else."""
    if raw is None:
        return {}
    try:
        # NaN and Infinity are not JSON; they become null rather than leak into a bundle.
        obj = json.loads(raw, parse_constant=lambda _: None)
    except (ValueError, RecursionError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _v0_metadata(sfd: int, uid: str) -> tuple[dict[str, Any], float] | None:
    """(metadata object, file mtime), or None if ``<uid>.metadata`` is absent."""
    fd = _open_file(uid + ".metadata", sfd)
    if fd is None:
        return None
    try:
        return _json_object(_read_fd(fd, METADATA_MAX)), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _v1_metadata(mfd: int) -> dict[str, Any]:
    """One key per file of ``metadata/``; values as text, ``preview`` and ``.<key>`` left out."""
    found: list[tuple[str, str]] = []
    total = 0
    with _scan(mfd) as it:
        for d in it:
            key = d.name
            if key.startswith(".") or key == "preview" or not key.isprintable():
                continue
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate-escaped)
                continue
            value = _text(_read_capped(key, mfd, VALUE_MAX))
            if value is None:  # absent (not a regular file) or over VALUE_MAX
                continue
            total += len(key) + len(value)
            if total > METADATA_MAX or len(found) >= KEYS_MAX:
                LOG.warning("journal entry metadata over %d bytes or %d keys: rest left out",
                            METADATA_MAX, KEYS_MAX)
                break
            found.append((key, value))
    return dict(sorted(found))


def _check_uid(uid: str) -> None:
    if not isinstance(uid, str) or not UID_RE.fullmatch(uid):
        raise JournalError(f"invalid journal entry uid {uid!r}")


def read_metadata(root_fd: int, uid: str) -> dict[str, Any]:
    """The entry's metadata as ``_metadata.json`` carries it, without ``preview``.

    Version 1+: every ``metadata/<key>`` file as a string (Sugar's export keeps strings),
    sorted by key. Version 0: the ``.metadata`` JSON object as stored ({} if invalid).
    """
    _check_uid(uid)
    if _require_layout(root_fd) == 0:
        with _dir("store", root_fd) as sfd:
            found = _v0_metadata(sfd, uid) if sfd is not None else None
        if found is None:
            raise EntryNotFound(f"no journal entry {uid}")
        meta = found[0]
        meta.pop("preview", None)
        return meta
    with _entry_dir(root_fd, uid) as ufd, _dir("metadata", ufd) as mfd:
        if mfd is None:
            raise EntryNotFound(f"no journal entry {uid}")
        return _v1_metadata(mfd)


# ---------------------------------------------------------------- listing


def _load(root_fd: int, layout: int, uid: str) -> Entry | None:
    if layout == 0:
        with _dir("store", root_fd) as sfd:
            found = _v0_metadata(sfd, uid) if sfd is not None else None
            if found is None:
                return None
            meta = found[0]
            size = _file_size(uid, sfd)
            with _dir("preview", sfd) as pfd:
                preview = _file_size(uid, pfd)
        fields = {k: _field(meta.get(k)) for k in _LIST_KEYS}
        stamp = _timestamp(meta.get("timestamp"))
    else:
        with _entry_dir(root_fd, uid) as ufd, _dir("metadata", ufd) as mfd:
            if mfd is None:
                return None
            fields = {k: _text(_read_capped(k, mfd, LIST_VALUE_MAX)) for k in _LIST_KEYS}
            preview = _file_size("preview", mfd)
            size = _file_size("data", ufd)
        stamp = _timestamp(fields["timestamp"])
    return Entry(uid=uid, title=fields["title"], activity=fields["activity"],
                 mime_type=fields["mime_type"], mtime=fields["mtime"], timestamp=stamp,
                 size=size or 0, has_preview=bool(preview), layout=layout)


def _entries(root_fd: int, layout: int) -> Generator[Entry, None, None]:
    with contextlib.closing(_uids(root_fd, layout)) as uids:
        for uid in uids:
            entry = _load(root_fd, layout, uid)
            if entry is not None:
                yield entry


def iter_entries(root_fd: int) -> Generator[Entry, None, None]:
    """Every entry, one at a time, in directory order (stable: snapshots never change).

    Raises NotADatastore at once, not on the first ``next()``. Close the iterator (or
    exhaust it) to release its directory descriptors promptly."""
    return _entries(root_fd, _require_layout(root_fd))


def _matches(entry: Entry, needle: str) -> bool:
    return any(needle in v.casefold() for v in (entry.title, entry.activity, entry.uid) if v)


def list_entries(root_fd: int, offset: int = 0, limit: int = 100,
                 query: str | None = None) -> tuple[list[Entry], bool]:
    """One page of ``iter_entries`` order, and whether more entries follow it.

    ``query`` keeps entries whose title, activity or uid contains it, ignoring case.
    Without a query, the entries before ``offset`` are skipped without being read."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    layout = _require_layout(root_fd)
    page: list[Entry] = []
    skipped = 0
    if not query:
        with contextlib.closing(_uids(root_fd, layout)) as uids:
            for uid in uids:
                if skipped < offset:
                    skipped += 1
                elif len(page) == limit:
                    return page, True
                elif (entry := _load(root_fd, layout, uid)) is not None:
                    page.append(entry)
        return page, False
    needle = query.casefold()
    with contextlib.closing(_entries(root_fd, layout)) as entries:
        for entry in entries:
            if not _matches(entry, needle):
                continue
            if skipped < offset:
                skipped += 1
            elif len(page) == limit:
                return page, True
            else:
                page.append(entry)
    return page, False


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
    _check_uid(uid)
    layout = _require_layout(root_fd)
    with contextlib.ExitStack() as stack:

        def keep(fd: int | None) -> int | None:
            if fd is not None:
                stack.callback(os.close, fd)
            return fd

        if layout == 0:
            sfd = keep(_open_dir("store", root_fd))
            found = _v0_metadata(sfd, uid) if sfd is not None else None
            if sfd is None or found is None:
                raise EntryNotFound(f"no journal entry {uid}")
            meta, meta_mtime = found
            meta.pop("preview", None)
            data = keep(_open_file(uid, sfd))
            pfd = keep(_open_dir("preview", sfd))
            preview = keep(_open_file(uid, pfd)) if pfd is not None else None
        else:
            pfx = keep(_open_dir(uid[:2], root_fd))
            ufd = keep(_open_dir(uid, pfx)) if pfx is not None else None
            mfd = keep(_open_dir("metadata", ufd)) if ufd is not None else None
            if ufd is None or mfd is None:
                raise EntryNotFound(f"no journal entry {uid}")
            meta, meta_mtime = _v1_metadata(mfd), os.fstat(mfd).st_mtime
            data = keep(_open_file("data", ufd))
            preview = keep(_open_file("preview", mfd))
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
