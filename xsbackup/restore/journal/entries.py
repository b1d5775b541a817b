"""Reading Sugar Journal entries in a ``datastore`` snapshot: layouts, metadata, listing.

See ds-backup-protocol.md, "Datastore layouts". Every function takes ``root_fd``, an open
descriptor of the datastore directory of one snapshot (the directory holding ``store/``
or ``version``). Every file is reached through ``access``'s ``try_open_*``: a real
symlink is absent, and so is a file whose recorded mode is not a regular file (a client's
symlink, device, fifo or socket), whose content is not the client's file content.
``root_fd`` is never read from directly: listings reopen ``"."``.

Nothing is written to the snapshot. Metadata values are read with size caps, so memory
stays bounded whatever the files hold.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

from xsbackup.errors import EntryNotFound, JournalError, NotADatastore
from xsbackup.restore.access import (
    file_size,
    is_dir_at,
    read_capped,
    read_fd,
    scan,
    subdir,
    try_open_dir,
    try_open_file,
)

LOG = logging.getLogger(__name__)

UID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HEX2 = re.compile(r"[0-9a-fA-F]{2}")

LIST_VALUE_MAX = 64 << 10  # a listed field (title, activity...) larger than this is None
VALUE_MAX = 4 << 20  # a metadata value larger than this is left out of read_metadata
METADATA_MAX = 16 << 20  # total text metadata per entry; also caps a v0 .metadata file
KEYS_MAX = 4096  # metadata keys per entry
_LIST_KEYS = ("title", "activity", "mime_type", "mtime", "timestamp")


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


# ---------------------------------------------------------------- layouts


def detect_layout(root_fd: int) -> int | None:
    """0 if ``store/`` exists (Sugar 0.82); else the number in ``version`` (1+, current
    Sugar writes 6); else 1 if a ``<2 hex>/<uid>/metadata/`` directory exists; else None."""
    store = try_open_dir("store", root_fd)
    if store is not None:
        os.close(store)
        return 0
    raw = read_capped("version", root_fd, 32)
    if raw is not None:
        text = raw.strip()
        if text.isdigit() and len(text) <= 9 and int(text) >= 1:
            return int(text)
    with contextlib.closing(_v1_uids(root_fd, hex_prefix=True)) as uids:
        return None if next(uids, None) is None else 1


def require_layout(root_fd: int) -> int:
    """0 or 1 (every version from 1 on is read alike); NotADatastore otherwise."""
    layout = detect_layout(root_fd)
    if layout is None:
        raise NotADatastore()
    return min(layout, 1)


def _v1_uids(root_fd: int, hex_prefix: bool = False) -> Generator[str, None, None]:
    """Uids having ``<uid[:2]>/<uid>/metadata/``, in directory order.

    Only names of at most two characters can be prefixes, so ``index/``, ``checksums/``,
    ``version`` and ``index_updated`` are never looked into."""
    with scan(root_fd) as it:
        for d in it:
            prefix = d.name
            if len(prefix) > 2 or not UID_RE.fullmatch(prefix):
                continue
            if hex_prefix and not _HEX2.fullmatch(prefix):
                continue
            if not d.is_dir(follow_symlinks=False):
                continue
            with subdir(prefix, root_fd) as pfd, scan(pfd) as uids:
                for u in uids:
                    uid = u.name
                    if uid[:2] != prefix or not UID_RE.fullmatch(uid):
                        continue
                    with subdir(uid, pfd) as ufd:
                        if is_dir_at("metadata", ufd):
                            yield uid


def _v0_uids(root_fd: int) -> Generator[str, None, None]:
    """Uids having a usable ``store/<uid>.metadata`` file, in directory order."""
    with subdir("store", root_fd) as sfd, scan(sfd) as it:
        for d in it:
            uid = d.name.removesuffix(".metadata")
            if sfd is None or uid == d.name or not UID_RE.fullmatch(uid):
                continue
            fd = try_open_file(d.name, sfd)
            if fd is not None:
                os.close(fd)
                yield uid


def _uids(root_fd: int, layout: int) -> Generator[str, None, None]:
    return _v0_uids(root_fd) if layout == 0 else _v1_uids(root_fd)


@contextlib.contextmanager
def _entry_dir(root_fd: int, uid: str) -> Iterator[int | None]:
    """The open ``<uid[:2]>/<uid>`` directory of a version 1+ entry."""
    with subdir(uid[:2], root_fd) as pfd, subdir(uid, pfd) as ufd:
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


def v0_metadata(sfd: int, uid: str) -> tuple[dict[str, Any], float] | None:
    """(metadata object, file mtime), or None if ``<uid>.metadata`` is absent."""
    fd = try_open_file(uid + ".metadata", sfd)
    if fd is None:
        return None
    try:
        return _json_object(read_fd(fd, METADATA_MAX)), os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def v1_metadata(mfd: int) -> dict[str, Any]:
    """One key per file of ``metadata/``; values as text, ``preview`` and ``.<key>`` left out."""
    found: list[tuple[str, str]] = []
    total = 0
    with scan(mfd) as it:
        for d in it:
            key = d.name
            if key.startswith(".") or key == "preview" or not key.isprintable():
                continue
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:  # a name that is not UTF-8 (surrogate-escaped)
                continue
            value = _text(read_capped(key, mfd, VALUE_MAX))
            if value is None:  # absent (not a regular file) or over VALUE_MAX
                continue
            total += len(key) + len(value)
            if total > METADATA_MAX or len(found) >= KEYS_MAX:
                LOG.warning("journal entry metadata over %d bytes or %d keys: rest left out",
                            METADATA_MAX, KEYS_MAX)
                break
            found.append((key, value))
    return dict(sorted(found))


def check_uid(uid: str) -> None:
    if not isinstance(uid, str) or not UID_RE.fullmatch(uid):
        raise JournalError(f"invalid journal entry uid {uid!r}")


def read_metadata(root_fd: int, uid: str) -> dict[str, Any]:
    """The entry's metadata as ``_metadata.json`` carries it, without ``preview``.

    Version 1+: every ``metadata/<key>`` file as a string (Sugar's export keeps strings),
    sorted by key. Version 0: the ``.metadata`` JSON object as stored ({} if invalid).
    """
    check_uid(uid)
    if require_layout(root_fd) == 0:
        with subdir("store", root_fd) as sfd:
            found = v0_metadata(sfd, uid) if sfd is not None else None
        if found is None:
            raise EntryNotFound(f"no journal entry {uid}")
        meta = found[0]
        meta.pop("preview", None)
        return meta
    with _entry_dir(root_fd, uid) as ufd, subdir("metadata", ufd) as mfd:
        if mfd is None:
            raise EntryNotFound(f"no journal entry {uid}")
        return v1_metadata(mfd)


# ---------------------------------------------------------------- listing


def _load(root_fd: int, layout: int, uid: str) -> Entry | None:
    if layout == 0:
        with subdir("store", root_fd) as sfd:
            found = v0_metadata(sfd, uid) if sfd is not None else None
            if found is None:
                return None
            meta = found[0]
            size = file_size(uid, sfd)
            with subdir("preview", sfd) as pfd:
                preview = file_size(uid, pfd)
        fields = {k: _field(meta.get(k)) for k in _LIST_KEYS}
        stamp = _timestamp(meta.get("timestamp"))
    else:
        with _entry_dir(root_fd, uid) as ufd, subdir("metadata", ufd) as mfd:
            if mfd is None:
                return None
            fields = {k: _text(read_capped(k, mfd, LIST_VALUE_MAX)) for k in _LIST_KEYS}
            preview = file_size("preview", mfd)
            size = file_size("data", ufd)
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
    return _entries(root_fd, require_layout(root_fd))


def _matches(entry: Entry, needle: str) -> bool:
    return any(needle in v.casefold() for v in (entry.title, entry.activity, entry.uid) if v)


def list_entries(root_fd: int, offset: int = 0, limit: int = 100,
                 query: str | None = None) -> tuple[list[Entry], bool]:
    """One page of ``iter_entries`` order, and whether more entries follow it.

    ``query`` keeps entries whose title, activity or uid contains it, ignoring case.
    Without a query, the entries before ``offset`` are skipped without being read."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    layout = require_layout(root_fd)
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

