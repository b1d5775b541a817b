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
* otherwise a *delta* (v4) is written: the new files' records (their content read and
  hashed, on threads when there is much of it) and the gone paths, this promotion's
  changes only, resting on the previous manifest: on the previous whole manifest, or,
  when the previous one is a delta, on its chain and itself. The backend keeps every
  file of the chain beside the new manifest (its ``base``, ``d1``, ... parts:
  ``MANIFEST_CHAIN``), so pruning the snapshots they came from never breaks it. Once
  the chain would be deeper than ``MAX_DEPTH`` deltas, or list more than
  ``DELTA_FRACTION`` of its base's records (and ``DELTA_MIN_LINES``) in all, a whole
  manifest is written instead (``merge``: the previous manifest's bytes with the
  changes spliced in);
* without a usable previous manifest, or when the walk could not compare (``repair``),
  every record is built (``build``): a file reuses the digest of the previous manifest's
  record of its inode when that is sound (``_same_file``), the others are read.

``read_bytes`` is the one reader: it resolves a delta into the whole manifest's bytes
(its chain's deltas composed, then spliced into its base, each place found by a search
over the sorted lines that parses only the lines it probes), which ``parse_lines``
reads.

**Format** (``docs/manifest.md``): UTF-8 text, one JSON object per line. The first line
is the header ``{"format": "xsbackup-manifest", "version": 2, "algorithm":
"blake2b-256", "files": N}`` (version 1 also named the snapshot; it is still read); then
one line per regular file, sorted by path (code points): ``{"p": PATH, "i": INODE, "s":
SIZE, "m": MTIME_NS, "d": HEX_DIGEST}``, where a path that is not valid UTF-8 is given as
``"x": HEX_OF_ITS_BYTES`` instead of ``"p"``. A delta's header has ``"version": 4``,
``"records": R, "gone": G``, its place in its chain ``"depth": D`` and the chain's lines
in all ``"lines": L``; then R record lines and G gone lines (``{"g": PATH}``, a
directory's path ending in ``/``), each sorted (``manifest_lines``). A version 3 delta
(written before chains: ``"depth"`` 1, over its base alone) is still read.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from xsbackup.snapshots.digests import digest_at, digest_fd, new_hash
from xsbackup.snapshots.manifest_hash import BuildStats, all_files, hash_files, new_lines
from xsbackup.snapshots.manifest_lines import (
    ManifestError,
    Record,
    gone_line,
    gone_path,
    line,
    load,
    record,
    record_at,
    seek,
    splice,
)
from xsbackup.snapshots.snapshot import Changes, Lstat
from xsbackup.storage.base import MANIFEST_CHAIN, Backend

__all__ = ["BuildStats", "ManifestError", "Record", "digest_at", "digest_fd", "new_hash"]

FORMAT = "xsbackup-manifest"
VERSION = 2
MERGED = 3                  # a delta over its base alone (written before chains; read)
DELTA = 4                   # a delta: records and gone paths over the manifest before it
DELTAS = (MERGED, DELTA)
WHOLE = (1, 2)
READABLE = (*WHOLE, *DELTAS)
ALGORITHM = "blake2b-256"
MAX_DEPTH = len(MANIFEST_CHAIN)  # deltas a reader applies to a base, at most
DELTA_FRACTION = 8          # a chain's deltas list at most 1/8 of its base's records ...
DELTA_MIN_LINES = 256       # ... or this many lines, whichever is more
_DELTA_HEADS = tuple(b'{"format":"%s","version":%d,' % (FORMAT.encode(), v) for v in DELTAS)


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
    if head["version"] in DELTAS and not (
            isinstance(head.get("records"), int) and isinstance(head.get("gone"), int) and
            (head["version"] == MERGED or (isinstance(head.get("lines"), int) and
             isinstance(head.get("depth"), int) and 1 <= head["depth"] <= MAX_DEPTH))):
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
    """The snapshot's whole manifest (a delta resolved over its chain); None when it has
    none. ManifestError when a delta is damaged or a file of its chain is missing."""
    data = _read_part(storage, client, volume, sid)
    if data is None or not data.startswith(_DELTA_HEADS):
        return data
    deltas = []
    depth = int(_head(data[:data.find(b"\n")], DELTAS).get("depth", 1))
    for part in MANIFEST_CHAIN[1:depth]:
        below = _read_part(storage, client, volume, sid, part)
        if below is None:
            raise ManifestError(f"the manifest is a delta and its chain's {part} is missing")
        deltas.append(below)
    base = _read_part(storage, client, volume, sid, "base")
    if base is None:
        raise ManifestError("the manifest is a delta and its base is missing")
    return resolve(base, [*deltas, data])


def read(storage: Backend, client: str, volume: str, sid: str) -> list[Record] | None:
    """Every record of the snapshot's manifest; None when it has none. ManifestError
    when it is damaged."""
    data = read_bytes(storage, client, volume, sid)
    return None if data is None else parse_lines(data)


class Delta:
    """A delta manifest's parts: its header's fields, its place in its chain (``depth``,
    1 for a version 3 delta) and its lines (records, then gone paths)."""

    def __init__(self, data: bytes) -> None:
        end = data.find(b"\n")
        if end < 0 or not data.endswith(b"\n"):
            raise ManifestError("the manifest does not end with a complete line")
        self.head = _head(data[:end], DELTAS)
        self.depth = int(self.head.get("depth", 1))
        lines = data[end + 1:].split(b"\n")[:-1]
        want = self.head["records"] + self.head["gone"]
        if len(lines) != want:
            raise ManifestError(f"the header announces {want} lines, the delta has "
                                f"{len(lines)}")
        self.n_records = self.head["records"]
        self._lines = lines

    def parse(self) -> tuple[list[tuple[str, bytes]], list[str]]:
        """The records' (path, line) and the gone paths (ManifestError for a damaged
        line)."""
        n, lines = self.n_records, self._lines
        return ([(record(load(raw, i), i).path, raw) for i, raw in enumerate(lines[:n], 2)],
                [gone_path(load(raw, i), i) for i, raw in enumerate(lines[n:], n + 2)])


def resolve(base: bytes, deltas: list[bytes]) -> bytes:
    """The whole manifest a chain of ``deltas`` (the first over ``base``, each over the
    one before) makes of the whole manifest ``base``. The deltas are composed first (a
    later record or gone path replaces an earlier record of that path or below it);
    then ``base``'s lines of every gone path and record path are cut out and the
    records put in. ManifestError if any is damaged, out of place, or the count
    disagrees."""
    records: dict[str, bytes] = {}
    gone: dict[str, None] = {}
    files = 0
    for depth, data in enumerate(deltas, start=1):
        delta = Delta(data)
        if delta.depth != depth:
            raise ManifestError(f"part {depth} of the delta's chain is a delta of depth "
                                f"{delta.depth}")
        rows, paths = delta.parse()
        dirs = tuple(g for g in paths if g.endswith("/"))
        for g in paths:
            records.pop(g, None)
            gone[g] = None
        if dirs and records:
            records = {p: raw for p, raw in records.items() if not p.startswith(dirs)}
        records.update(rows)
        files = delta.head["files"]
    start = base.find(b"\n") + 1
    if not start or not base.endswith(b"\n"):
        raise ManifestError("the base of the delta does not end with a complete line")
    count = _head(base[:start - 1], WHOLE)["files"]
    order = sorted(records)
    pieces, cut = splice(base, start, [*gone, *order],
                         [(p, records[p] + b"\n") for p in order])
    if count - cut + len(order) != files:
        raise ManifestError(f"the header announces {files} files, the delta over its base "
                            f"makes {count - cut + len(order)}")
    return header(files) + b"".join(pieces)


# ---- building ----------------------------------------------------------------------------


class Previous:
    """The previous snapshot's manifest, for ``keep`` and ``build``: its id, version and
    header line, how many records it announces, a delta's place in its chain, its
    chain's lines in all and its base's record count, and (resolved when first needed)
    the whole manifest's bytes."""

    def __init__(self, storage: Backend, client: str, volume: str, sid: str, head: bytes,
                 fields: dict[str, Any]) -> None:
        self.sid, self.head, self.count = sid, head, int(fields["files"])
        self.version = int(fields["version"])
        self.depth = 0 if self.version in WHOLE else int(fields.get("depth", 1))
        self.lines = 0 if self.version in WHOLE else \
            int(fields.get("lines", fields["records"] + fields["gone"]))
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
    if not head.endswith(b"\n"):
        return None
    if prev.depth:
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
            (prev.depth or prev.head == header(prev.count)):
        # (a v1 header names its snapshot: such a manifest is never linked)
        storage.link_manifest(client, volume, sid, prev.sid)
        return BuildStats(changes.files, changes.files, how="linked")
    data: bytes | None = None
    stats = BuildStats(changes.files)
    adds: list[tuple[str, bytes]] | None = None
    if prev is not None and origin is None:
        adds = new_lines(tree, changes, stats)
        got = delta(changes, prev, adds, stats)
        if got is not None:
            # A file of the previous chain gone (pruned meanwhile): a whole one instead.
            with contextlib.suppress(FileNotFoundError):
                storage.write_manifest(client, volume, sid, got[0], chain=got[1])
                return stats
    if prev is not None:
        data, stats = merge(tree, changes, prev, origin, adds, stats)
    if data is None:
        files = changes.new_files() if not changes.kept else list(all_files(tree))
        data, stats = build(tree, files, prev, changes.same_fs, changes.since_ns, origin)
    storage.write_manifest(client, volume, sid, data)
    return stats


def delta(changes: Changes, prev: Previous, adds: list[tuple[str, bytes]],
          stats: BuildStats) -> tuple[bytes, list[tuple[str, str]]] | None:
    """A delta manifest of the new records (``adds``: ``(path, line with its newline)``,
    sorted by path) and the gone paths over ``prev``'s manifest,
    and the chain it rests on (``prev``'s own chain and ``prev`` itself, or ``prev``
    alone when it is whole); None when the chain would be deeper than ``MAX_DEPTH`` or
    list more lines in all than ``DELTA_FRACTION`` of its base's records (and
    ``DELTA_MIN_LINES``): a whole manifest is written then. O(this promotion's
    changes): ``prev``'s deltas are neither read nor rewritten."""
    gone = sorted(changes.gone)
    chain = [(prev.sid, part) for part in MANIFEST_CHAIN[:prev.depth]] + [(prev.sid, "")]
    lines = prev.lines + len(adds) + len(gone)
    if len(chain) > MAX_DEPTH or \
            lines > max(DELTA_MIN_LINES, prev.base_count // DELTA_FRACTION):
        return None
    stats.how, stats.reused = "delta", changes.files - stats.hashed_files
    head = orjson.dumps({"format": FORMAT, "version": DELTA, "algorithm": ALGORITHM,
                         "files": changes.files, "records": len(adds), "gone": len(gone),
                         "depth": len(chain), "lines": lines})
    return (head + b"\n" + b"".join(raw for _, raw in adds) +
            b"".join(gone_line(g) + b"\n" for g in gone)), chain


def _unchanged_copy(origin: Path | None, rel: str, st: Lstat, rec: Record | None,
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


def _copies(data: bytes, start: int, changes: Changes, origin: Path) -> tuple[
        list[Record], list[tuple[str, Lstat]]]:
    """The new files whose previous record (at their path in ``data``) still holds by
    ``_unchanged_copy``, as records; and the others."""
    copied, unknown = [], []
    at = start
    for p, st in sorted(changes.new_files(), key=lambda f: f[0]):
        at = seek(data, p, at)
        rec = record_at(data, at)
        if rec is not None and _unchanged_copy(origin, p, st, rec, changes.since_ns):
            copied.append(Record(p, st.st_ino, st.st_size, st.st_mtime_ns, rec.digest))
        else:
            unknown.append((p, st))
    return copied, unknown


def merge(tree: Path, changes: Changes, prev: Previous, origin: Path | None = None,
          adds: list[tuple[str, bytes]] | None = None,
          stats: BuildStats | None = None) -> tuple[bytes | None, BuildStats]:
    """The previous manifest (whole) with the gone paths and the new files' paths cut
    out and the new files' records (``adds``, as ``manifest_hash.new_lines`` gives them, else read
    here) spliced in; (None, …) when
    the result would not list exactly the walk's files (the caller then builds it
    whole). ``changes.gone`` names a file as its path, a directory as its path and
    ``/`` (all that was below it)."""
    stats = stats or BuildStats(changes.files)
    stats.how = "merged"
    data = prev.data
    start = prev.body
    if not start or not data.endswith(b"\n"):
        return None, stats
    if adds is None:
        copied, unknown = ([], changes.new_files()) if origin is None else \
            _copies(data, start, changes, origin)
        adds = [(r.path, line(r) + b"\n") for r in copied + hash_files(tree, unknown, stats)]
    pieces, cut = splice(data, start, [*changes.gone, *(p for p, _ in adds)], adds)
    if prev.count - cut + len(adds) != changes.files:
        return None, stats
    stats.reused = changes.files - stats.hashed_files
    return header(changes.files) + b"".join(pieces), stats


def _same_file(rec: Record, st: Lstat, same_fs: bool, since_ns: int) -> bool:
    """Whether ``rec`` (the previous manifest's record of this inode number) describes the
    file with lstat ``st``: same inode, size and mtime, and either the same filesystem
    (one inode object) or a ctime older than the previous snapshot (``Changes``)."""
    return rec.inode == st.st_ino and rec.size == st.st_size and \
        rec.mtime_ns == st.st_mtime_ns and (same_fs or st.st_ctime_ns < since_ns)


def build(tree: Path, files: Iterable[tuple[str, Lstat]], prev: Previous | None,
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
    records += hash_files(tree, unknown, stats)
    return encode(records), stats
