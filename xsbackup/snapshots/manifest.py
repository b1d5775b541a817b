"""Content manifests: the BLAKE2b-256 of every stored regular file of a snapshot.

Written by the post-processor at promotion (``postprocess``), kept by the storage backend
beside the snapshot (``Backend.write_manifest``), never edited. ``integrity`` checks
snapshots against them; the ``manifest`` verb and the HTTP manifest show the digests.

**Cost: O(changed files).** The post-processor's one walk (``snapshot.compute_stats``)
already lists both trees, so it says which regular files are *kept* (the previous
snapshot's very file at the same path: ``snapshot.Changes``), which are new, and which
entries of the previous snapshot are gone. A kept file's record is the previous
manifest's, byte for byte (same path, inode, size, mtime and content), so ``keep``
never reads those records:

* nothing new and nothing gone: the new manifest *is* the previous one, and the backend
  links it (``Backend.link_manifest``; v2 and v3 manifests name no snapshot);
* otherwise a *delta* (v3) is written: the new files' records (their content read and
  hashed, on threads when there is much of it) and the gone paths, resting on a whole
  manifest (the previous one, or the one the previous delta rests on, which the backend
  keeps beside it as its ``base`` part, so pruning the snapshot it came from never
  breaks it). Chains are one delta deep: a delta on a delta is the two merged
  (``compose``), and once it would list more than ``DELTA_FRACTION`` of its base's
  records (and ``DELTA_MIN_LINES``), a whole manifest is written instead (``merge``:
  the previous manifest's bytes with the changes spliced in);
* without a usable previous manifest, or when the walk could not compare (``repair``),
  every record is built (``build``): a file reuses the digest of the previous manifest's
  record of its inode when that is sound (``_same_file``), the others are read.

``read_bytes`` is the one reader: it resolves a delta into the whole manifest's bytes
(its base with the changes spliced in, each place found by a search over the sorted
lines that parses only the lines it probes), which ``parse_lines`` reads.

**Format** (``docs/manifest.md``): UTF-8 text, one JSON object per line. The first line
is the header ``{"format": "xsbackup-manifest", "version": 2, "algorithm":
"blake2b-256", "files": N}`` (version 1 also named the snapshot; it is still read); then
one line per regular file, sorted by path (code points): ``{"p": PATH, "i": INODE, "s":
SIZE, "m": MTIME_NS, "d": HEX_DIGEST}``, where a path that is not valid UTF-8 is given as
``"x": HEX_OF_ITS_BYTES`` instead of ``"p"``. A delta's header has ``"version": 3`` and
``"records": R, "gone": G``; then R record lines and G gone lines (``{"g": PATH}``, a
directory's path ending in ``/``), each sorted (``manifest_lines``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from xsbackup.snapshots.digests import digest_all, digest_at, digest_fd, new_hash
from xsbackup.snapshots.manifest_lines import (
    ManifestError,
    Record,
    gone_line,
    gone_path,
    line,
    load,
    merge_lines,
    record,
    record_at,
    seek,
    splice,
)
from xsbackup.snapshots.snapshot import Changes
from xsbackup.storage.base import Backend

__all__ = ["ManifestError", "Record", "digest_at", "digest_fd", "new_hash"]

FORMAT = "xsbackup-manifest"
VERSION = 2
DELTA = 3                   # a delta manifest: records and gone paths over its base
WHOLE = (1, 2)
READABLE = (1, 2, DELTA)
ALGORITHM = "blake2b-256"
DELTA_FRACTION = 8          # a delta lists at most 1/8 of its base's records ...
DELTA_MIN_LINES = 256       # ... or this many lines, whichever is more


@dataclass
class BuildStats:
    files: int = 0          # regular files listed
    reused: int = 0         # records (digests) taken from the previous snapshot's manifest
    hashed_files: int = 0   # files read and hashed
    hashed_bytes: int = 0   # bytes read and hashed
    how: str = "built"      # linked, delta (over a base), merged (into it) or built

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- encoding and reading ------------------------------------------------------------------


def header(files: int) -> bytes:
    return orjson.dumps({"format": FORMAT, "version": VERSION, "algorithm": ALGORITHM,
                         "files": files}) + b"\n"


def encode(records: Iterable[Record]) -> bytes:
    rows = sorted(records)  # by path first: code points, a non-UTF-8 byte as its escape
    return header(len(rows)) + b"".join(line(r) + b"\n" for r in rows)


def _head(raw: bytes, versions: tuple[int, ...] = READABLE) -> dict[str, Any]:
    """A header line's fields; ManifestError if it is none (of ``versions``)."""
    head = load(raw, 1)
    if head.get("format") != FORMAT or head.get("version") not in versions or \
            not isinstance(head.get("files"), int):
        raise ManifestError("line 1 is not an xsbackup manifest header")
    if head["version"] == DELTA and not (isinstance(head.get("records"), int) and
                                         isinstance(head.get("gone"), int)):
        raise ManifestError("line 1 is not an xsbackup manifest header")
    return head


def parse_lines(data: bytes, cache: dict[bytes, Record] | None = None) -> list[Record]:
    """The records of a whole manifest's bytes (as ``read_bytes`` returns them). With
    ``cache``, a line already parsed (the same bytes, as in the manifests of a volume's
    successive snapshots) is not parsed again."""
    lines = data.split(b"\n")
    if lines[-1] != b"" or len(lines) < 2:
        raise ManifestError("the manifest does not end with a complete line")
    want = _head(lines[0], WHOLE)["files"]
    body = lines[1:-1]
    if len(body) != want:
        raise ManifestError(f"the header announces {want} files, the manifest lists "
                            f"{len(body)}")
    if cache is None:
        return [record(load(raw, n), n) for n, raw in enumerate(body, start=2)]
    out = []
    for n, raw in enumerate(body, start=2):
        rec = cache.get(raw)
        if rec is None:
            rec = cache[raw] = record(load(raw, n), n)
        out.append(rec)
    return out


def _read_part(storage: Backend, client: str, volume: str, sid: str,
               part: str = "") -> bytes | None:
    fh = storage.open_manifest(client, volume, sid, part)
    if fh is None:
        return None
    with fh:
        return fh.read()


def read_bytes(storage: Backend, client: str, volume: str, sid: str) -> bytes | None:
    """The snapshot's whole manifest (a delta resolved over its base); None when it has
    none. ManifestError when a delta is damaged or its base is missing."""
    data = _read_part(storage, client, volume, sid)
    if data is None or not data.startswith(b'{"format":"xsbackup-manifest","version":3,'):
        return data
    base = _read_part(storage, client, volume, sid, "base")
    if base is None:
        raise ManifestError("the manifest is a delta and its base is missing")
    return resolve(base, data)


def read(storage: Backend, client: str, volume: str, sid: str) -> list[Record] | None:
    """Every record of the snapshot's manifest; None when it has none. ManifestError
    when it is damaged."""
    data = read_bytes(storage, client, volume, sid)
    return None if data is None else parse_lines(data)


class Delta:
    """A delta manifest's parts: its header's fields, its record lines and its gone
    lines (each a ``bytes`` of whole lines, sorted), and the gone paths."""

    def __init__(self, data: bytes) -> None:
        end = data.find(b"\n")
        if end < 0 or not data.endswith(b"\n"):
            raise ManifestError("the manifest does not end with a complete line")
        self.head = _head(data[:end], (DELTA,))
        lines = data[end + 1:].split(b"\n")[:-1]
        want = self.head["records"] + self.head["gone"]
        if len(lines) != want:
            raise ManifestError(f"the header announces {want} lines, the delta has "
                                f"{len(lines)}")
        n = self.n_records = self.head["records"]
        self.n_gone = self.head["gone"]
        cut = end + 1 + sum(len(raw) + 1 for raw in lines[:n])
        self.records, self.gone = data[end + 1:cut], data[cut:]
        self._lines = lines

    def parse(self) -> tuple[list[str], list[str]]:
        """The records' paths and the gone paths (ManifestError for a damaged line)."""
        n, lines = self.n_records, self._lines
        return ([record(load(raw, i), i).path for i, raw in enumerate(lines[:n], 2)],
                [gone_path(load(raw, i), i) for i, raw in enumerate(lines[n:], n + 2)])


def resolve(base: bytes, data: bytes) -> bytes:
    """The whole manifest a delta ``data`` makes of the whole manifest ``base``: its
    lines with the gone paths and the delta's paths cut out and the delta's records put
    in. ManifestError if either is damaged or the count disagrees."""
    delta = Delta(data)
    paths, gone = delta.parse()
    start = base.find(b"\n") + 1
    if not start or not base.endswith(b"\n"):
        raise ManifestError("the base of the delta does not end with a complete line")
    count = _head(base[:start - 1], WHOLE)["files"]
    raws = delta.records.split(b"\n")
    pieces, cut = splice(base, start, gone + paths,
                         [(p, raw + b"\n") for p, raw in zip(paths, raws, strict=False)])
    files = delta.head["files"]
    if count - cut + len(paths) != files:
        raise ManifestError(f"the header announces {files} files, the delta over its base "
                            f"makes {count - cut + len(paths)}")
    return header(files) + b"".join(pieces)


# ---- building ----------------------------------------------------------------------------


class Previous:
    """The previous snapshot's manifest, for ``keep`` and ``build``: its id, version and
    header line, how many records it announces, a delta's bytes and its base's record
    count, and (resolved when first needed) the whole manifest's bytes."""

    def __init__(self, storage: Backend, client: str, volume: str, sid: str, head: bytes,
                 fields: dict[str, Any]) -> None:
        self.sid, self.head, self.count = sid, head, int(fields["files"])
        self.version = int(fields["version"])
        self.delta = b""
        self.base_count = self.count
        self._where = (storage, client, volume)
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        """The whole manifest (b"" when it cannot be read: everything is then built)."""
        if self._data is None:
            try:
                self._data = read_bytes(*self._where, self.sid) or b""
            except ManifestError:
                self._data = b""
        return self._data

    @property
    def body(self) -> int:
        """Where the records start in ``data``."""
        return self.data.find(b"\n") + 1


def previous(storage: Backend, client: str, volume: str, sid: str | None) -> Previous | None:
    """Snapshot ``sid``'s manifest; None when there is no such snapshot or manifest, or
    its header (a delta's base's) is damaged (everything is then hashed)."""
    fh = storage.open_manifest(client, volume, sid) if sid is not None else None
    if fh is None or sid is None:
        return None
    with fh:
        head = fh.readline()
        try:
            fields = _head(head)
        except ManifestError:
            return None
        prev = Previous(storage, client, volume, sid, head, fields)
        if prev.version == DELTA:
            prev.delta = head + fh.read()
    if not head.endswith(b"\n"):
        return None
    if prev.version == DELTA:
        base = storage.open_manifest(client, volume, sid, "base")
        if base is None:
            return None
        with base:
            try:
                prev.base_count = int(_head(base.readline(), WHOLE)["files"])
            except ManifestError:
                return None
    return prev


def keep(storage: Backend, client: str, volume: str, sid: str, tree: Path,
         changes: Changes, prev: Previous | None) -> BuildStats:
    """Write the manifest of ``tree`` (snapshot ``sid``, not yet visible, which nothing
    else writes) from what the walk found (``changes``), reusing ``prev``. On a backend
    whose snapshots are copies of a persistent tree (``Backend.copied_from``), a file
    that is not kept reuses the previous record of its path when ``_unchanged_copy``
    holds."""
    origin = storage.copied_from(client, volume)
    if prev is not None and prev.count == changes.kept == changes.files and \
            not changes.new and not changes.gone and \
            (prev.version == DELTA or prev.head == header(prev.count)):
        # (a v1 header names its snapshot: such a manifest is never linked)
        storage.link_manifest(client, volume, sid, prev.sid)
        return BuildStats(changes.files, changes.files, how="linked")
    data: bytes | None = None
    stats = BuildStats(changes.files)
    new: list[Record] | None = None
    if prev is not None and origin is None:
        new = _hash_new(tree, changes.new, stats)
        got = delta(changes, prev, new, stats)
        if got is not None:
            storage.write_manifest(client, volume, sid, got[0], base=got[1])
            return stats
    if prev is not None:
        data, stats = merge(tree, changes, prev, origin, new, stats)
    if data is None:
        files = changes.new if not changes.kept else list(_all_files(tree))
        data, stats = build(tree, files, prev, changes.same_fs, changes.since_ns, origin)
    storage.write_manifest(client, volume, sid, data)
    return stats


def delta(changes: Changes, prev: Previous, new: list[Record],
          stats: BuildStats) -> tuple[bytes, tuple[str, str]] | None:
    """A delta manifest of the new records and the gone paths over ``prev``'s whole
    manifest (over its base, merged with its own delta, when ``prev`` is a delta), and
    the base it rests on; None when it would be too large (or ``prev``'s delta is
    damaged): a whole manifest is written then."""
    gone = sorted(changes.gone)
    adds = sorted((r.path, line(r) + b"\n") for r in new)
    base = (prev.sid, "")
    if prev.version == DELTA:
        try:
            old = Delta(prev.delta)
        except ManifestError:
            return None
        records, cut = merge_lines(old.records, gone + [p for p, _ in adds], adds)
        n_records = old.n_records - cut + len(adds)
        # a gone path replaces its own line and the lines below it (a directory's)
        gones, cut = merge_lines(old.gone, gone, [(g, gone_line(g) + b"\n") for g in gone])
        n_gone = old.n_gone - cut + len(gone)
        base = (prev.sid, "base")
    else:
        records = b"".join(raw for _, raw in adds)
        n_records = len(adds)
        gones = b"".join(gone_line(g) + b"\n" for g in gone)
        n_gone = len(gone)
    if n_records + n_gone > max(DELTA_MIN_LINES, prev.base_count // DELTA_FRACTION):
        return None
    stats.how, stats.reused = "delta", changes.files - stats.hashed_files
    head = orjson.dumps({"format": FORMAT, "version": DELTA, "algorithm": ALGORITHM,
                         "files": changes.files, "records": n_records, "gone": n_gone})
    return head + b"\n" + records + gones, base


def _all_files(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(tree / rel if rel else tree) as it:
            for e in it:
                path = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append(path)
                elif e.is_file(follow_symlinks=False):
                    yield path, e.stat(follow_symlinks=False)


def _unchanged_copy(origin: Path | None, rel: str, st: os.stat_result, rec: Record | None,
                    since_ns: int) -> bool:
    """Whether ``rec`` (the previous manifest's record of path ``rel``) holds for the
    file ``rel`` (lstat ``st``) of a snapshot copied from ``origin``: the file at ``rel``
    in ``origin`` has not changed since before the previous snapshot was copied from it
    (its ctime is older than that snapshot's id, ``since_ns``: any change to an inode,
    and a rename onto the path, moves the ctime), so both snapshots hold copies of its
    present bytes; size and mtime agree everywhere as a cross-check."""
    if origin is None or rec is None or rec.path != rel or rec.size != st.st_size or \
            rec.mtime_ns != st.st_mtime_ns:
        return False
    try:
        o = os.lstat(origin / rel)
    except OSError:
        return False
    return stat.S_ISREG(o.st_mode) and o.st_ctime_ns < since_ns and \
        o.st_size == st.st_size and o.st_mtime_ns == st.st_mtime_ns


def _hash_new(tree: Path, files: list[tuple[str, os.stat_result]],
              stats: BuildStats) -> list[Record]:
    files = sorted(files, key=lambda f: f[1].st_ino)  # inode order: nearer on disk
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        got = digest_all([(p, st.st_size) for p, st in files], fd)
    finally:
        os.close(fd)
    stats.hashed_files += len(files)
    stats.hashed_bytes += sum(n for _, n in got)
    return [Record(p, st.st_ino, st.st_size, st.st_mtime_ns, d)
            for (p, st), (d, _) in zip(files, got, strict=True)]


def _copies(data: bytes, start: int, changes: Changes, origin: Path) -> tuple[
        list[Record], list[tuple[str, os.stat_result]]]:
    """The new files whose previous record (at their path in ``data``) still holds by
    ``_unchanged_copy``, as records; and the others."""
    copied, unknown = [], []
    at = start
    for p, st in sorted(changes.new, key=lambda f: f[0]):
        at = seek(data, p, at)
        rec = record_at(data, at)
        if rec is not None and _unchanged_copy(origin, p, st, rec, changes.since_ns):
            copied.append(Record(p, st.st_ino, st.st_size, st.st_mtime_ns, rec.digest))
        else:
            unknown.append((p, st))
    return copied, unknown


def merge(tree: Path, changes: Changes, prev: Previous, origin: Path | None = None,
          new: list[Record] | None = None,
          stats: BuildStats | None = None) -> tuple[bytes | None, BuildStats]:
    """The previous manifest (whole) with the gone paths and the new files' paths cut
    out and the new files' records (``new``, else read here) spliced in; (None, …) when
    the result would not list exactly the walk's files (the caller then builds it
    whole). ``changes.gone`` names a file as its path, a directory as its path and
    ``/`` (all that was below it)."""
    stats = stats or BuildStats(changes.files)
    stats.how = "merged"
    data = prev.data
    start = prev.body
    if not start or not data.endswith(b"\n"):
        return None, stats
    if new is None:
        copied, unknown = ([], changes.new) if origin is None else \
            _copies(data, start, changes, origin)
        new = copied + _hash_new(tree, unknown, stats)
    pieces, cut = splice(data, start, [*changes.gone, *(r.path for r in new)],
                         [(r.path, line(r) + b"\n") for r in new])
    if prev.count - cut + len(new) != changes.files:
        return None, stats
    stats.reused = changes.files - stats.hashed_files
    return header(changes.files) + b"".join(pieces), stats


def _same_file(rec: Record, st: os.stat_result, same_fs: bool, since_ns: int) -> bool:
    """Whether ``rec`` (the previous manifest's record of this inode number) describes the
    file with lstat ``st``: same inode, size and mtime, and either the same filesystem
    (one inode object) or a ctime older than the previous snapshot (``Changes``)."""
    return rec.inode == st.st_ino and rec.size == st.st_size and \
        rec.mtime_ns == st.st_mtime_ns and (same_fs or st.st_ctime_ns < since_ns)


def build(tree: Path, files: Iterable[tuple[str, os.stat_result]], prev: Previous | None,
          same_fs: bool, since_ns: int = 0,
          origin: Path | None = None) -> tuple[bytes, BuildStats]:
    """The whole manifest of ``tree`` from its regular files ``(relative path, lstat)``:
    each digest copied from ``prev``'s record of the same inode where ``_same_file``
    holds (``same_fs``: ``tree`` and the previous snapshot are on one filesystem), or
    from its record of the same path where ``_unchanged_copy`` does; the other files
    read."""
    stats = BuildStats()
    by_inode: dict[int, Record] = {}
    by_path: dict[str, Record] = {}
    if prev is not None:
        try:
            records = parse_lines(prev.data)
        except ManifestError:
            records = []
        by_inode = {r.inode: r for r in records}
        by_path = {r.path: r for r in records} if origin is not None else {}
    records = []
    unknown = []
    for rel, st in files:
        stats.files += 1
        old = by_inode.get(st.st_ino)
        if old is None or not _same_file(old, st, same_fs, since_ns):
            old = by_path.get(rel)
            if not _unchanged_copy(origin, rel, st, old, since_ns):
                old = None
        if old is not None:
            stats.reused += 1
            records.append(Record(rel, st.st_ino, st.st_size, st.st_mtime_ns, old.digest))
        else:
            unknown.append((rel, st))
    records += _hash_new(tree, unknown, stats)
    return encode(records), stats
