"""Content manifests: the BLAKE2b-256 of every stored regular file of a snapshot.

Written by the post-processor at promotion (``postprocess``), kept by the storage backend
beside the snapshot (``Backend.write_manifest``), never edited. ``integrity`` checks
snapshots against them; the ``manifest`` verb and the HTTP manifest show the digests.

**Cost: O(changed files).** The post-processor's one walk (``snapshot.compute_stats``)
already lists both trees, so it says which regular files are *kept* (the previous
snapshot's very file at the same path: ``snapshot.Changes``), which are new, and which
entries of the previous snapshot are gone. A kept file's record is the previous
manifest's line, byte for byte (same path, inode, size, mtime and content), so ``keep``
never parses those lines:

* nothing new and nothing gone: the new manifest *is* the previous one, and the backend
  links it (``Backend.link_manifest``; a v2 manifest names no snapshot, so the bytes are
  the same);
* otherwise the previous body is cut where a path is gone and the new files' records
  (their content read and hashed, on threads when there is much of it) are spliced in
  at their sorted places, each place found by a search over the sorted lines that parses
  only the lines it probes;
* without a usable previous manifest, or when the walk could not compare (``repair``),
  every record is built (``build``): a file reuses the digest of the previous manifest's
  record of its inode when that is sound (``_same_file``), the others are read.

**Format** (``docs/manifest.md``): UTF-8 text, one JSON object per line. The first line
is the header ``{"format": "xsbackup-manifest", "version": 2, "algorithm":
"blake2b-256", "files": N}`` (version 1 also named the snapshot; it is still read); then
one line per regular file, sorted by path (code points): ``{"p": PATH, "i": INODE, "s":
SIZE, "m": MTIME_NS, "d": HEX_DIGEST}``, where a path that is not valid UTF-8 is given as
``"x": HEX_OF_ITS_BYTES`` instead of ``"p"``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from xsbackup.snapshots.snapshot import Changes
from xsbackup.storage.base import Backend

FORMAT = "xsbackup-manifest"
VERSION = 2
READABLE = (1, 2)
ALGORITHM = "blake2b-256"
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
HASH_THREADS = 2            # hashlib releases the GIL while it hashes a large buffer
THREADS_FROM_BYTES = 8 << 20  # below this much new content, threads only add overhead


class ManifestError(ValueError):
    """A manifest that is not one this module wrote (a line is damaged or missing)."""


class Record(NamedTuple):
    path: str     # relative to the snapshot; os.fsdecode form (surrogateescape)
    inode: int
    size: int
    mtime_ns: int
    digest: str   # hex BLAKE2b-256 of the content


@dataclass
class BuildStats:
    files: int = 0          # regular files listed
    reused: int = 0         # records (digests) taken from the previous snapshot's manifest
    hashed_files: int = 0   # files read and hashed
    hashed_bytes: int = 0   # bytes read and hashed
    how: str = "built"      # linked (the previous manifest), merged (into it) or built

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- hashing -----------------------------------------------------------------------------


def new_hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=32)


_BUFFERS = threading.local()  # one read buffer a thread, reused from file to file


def digest_fd(fd: int) -> tuple[str, int]:
    """(hex digest, bytes read) of the open file ``fd`` from its current offset."""
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None:
        buf = _BUFFERS.buf = bytearray(1 << 20)
    view = memoryview(buf)
    h = new_hash()
    n = 0
    while True:
        got = os.readv(fd, [buf])
        if not got:
            return h.hexdigest(), n
        h.update(view[:got])
        n += got


def digest_at(name: str, dir_fd: int | None = None) -> tuple[str, int]:
    """(hex digest, bytes read) of the file ``name`` (below ``dir_fd``), never following
    a symlink in its last component."""
    fd = os.open(name, O_READ, dir_fd=dir_fd)
    try:
        os.set_blocking(fd, True)
        return digest_fd(fd)
    finally:
        os.close(fd)


def digest_all(paths: list[str], sizes: int) -> list[tuple[str, int]]:
    """``digest_at`` of each path, in order; on ``HASH_THREADS`` threads when the files
    hold ``THREADS_FROM_BYTES`` or more together (``sizes``)."""
    if sizes < THREADS_FROM_BYTES or len(paths) < 2:
        return [digest_at(p) for p in paths]
    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="manifest") as pool:
        return list(pool.map(digest_at, paths))


# ---- encoding ----------------------------------------------------------------------------


def _line(r: Record) -> bytes:
    try:
        return orjson.dumps({"p": r.path, "i": r.inode, "s": r.size, "m": r.mtime_ns,
                             "d": r.digest})
    except orjson.JSONEncodeError:  # a name that is not UTF-8 (surrogate escapes)
        return orjson.dumps({"x": os.fsencode(r.path).hex(), "i": r.inode, "s": r.size,
                             "m": r.mtime_ns, "d": r.digest})


def header(files: int) -> bytes:
    return orjson.dumps({"format": FORMAT, "version": VERSION, "algorithm": ALGORITHM,
                         "files": files}) + b"\n"


def encode(records: Iterable[Record]) -> bytes:
    rows = sorted(records)  # by path first: code points, a non-UTF-8 byte as its escape
    return header(len(rows)) + b"".join(_line(r) + b"\n" for r in rows)


def _header_of(raw: bytes) -> int:
    """The number of records a header line announces; ManifestError if it is none."""
    head = _load(raw, 1)
    if head.get("format") != FORMAT or head.get("version") not in READABLE or \
            not isinstance(head.get("files"), int):
        raise ManifestError("line 1 is not an xsbackup manifest header")
    return int(head["files"])


def _record(row: dict[str, Any], lineno: int) -> Record:
    try:
        path = row["p"] if "p" in row else os.fsdecode(bytes.fromhex(row["x"]))
        return Record(path, int(row["i"]), int(row["s"]), int(row["m"]), str(row["d"]))
    except (KeyError, ValueError, TypeError):
        raise ManifestError(f"line {lineno} is not a manifest record") from None


def parse_lines(data: bytes, cache: dict[bytes, Record] | None = None) -> list[Record]:
    """The records of a whole manifest's bytes. With ``cache``, a line already parsed
    (the same bytes, as in the manifests of a volume's successive snapshots) is not
    parsed again."""
    lines = data.split(b"\n")
    if lines[-1] != b"" or len(lines) < 2:
        raise ManifestError("the manifest does not end with a complete line")
    want = _header_of(lines[0])
    body = lines[1:-1]
    if len(body) != want:
        raise ManifestError(f"the header announces {want} files, the manifest lists "
                            f"{len(body)}")
    if cache is None:
        return [_record(_load(raw, n), n) for n, raw in enumerate(body, start=2)]
    out = []
    for n, raw in enumerate(body, start=2):
        rec = cache.get(raw)
        if rec is None:
            rec = cache[raw] = _record(_load(raw, n), n)
        out.append(rec)
    return out


def _load(raw: bytes, lineno: int) -> dict[str, Any]:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError(f"line {lineno} is not JSON") from None
    if not isinstance(row, dict):
        raise ManifestError(f"line {lineno} is not a JSON object")
    return row


def read_bytes(storage: Backend, client: str, volume: str, sid: str) -> bytes | None:
    fh = storage.open_manifest(client, volume, sid)
    if fh is None:
        return None
    with fh:
        return fh.read()


def read(storage: Backend, client: str, volume: str, sid: str) -> list[Record] | None:
    """Every record of the snapshot's manifest; None when it has none. ManifestError
    when it is damaged."""
    data = read_bytes(storage, client, volume, sid)
    return None if data is None else parse_lines(data)


# ---- building ----------------------------------------------------------------------------


class Previous:
    """The previous snapshot's manifest, for ``keep`` and ``build``: its id, its header
    line, how many records it announces, and (read when first needed) its bytes."""

    def __init__(self, storage: Backend, client: str, volume: str, sid: str, head: bytes,
                 count: int) -> None:
        self.sid, self.head, self.count = sid, head, count
        self._where = (storage, client, volume)
        self._data: bytes | None = None

    @property
    def body(self) -> int:
        return len(self.head)

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = read_bytes(*self._where, self.sid) or b""
        return self._data


def previous(storage: Backend, client: str, volume: str, sid: str | None) -> Previous | None:
    """Snapshot ``sid``'s manifest; None when there is no such snapshot or manifest, or
    its header is damaged (everything is then hashed)."""
    fh = storage.open_manifest(client, volume, sid) if sid is not None else None
    if fh is None or sid is None:
        return None
    with fh:
        head = fh.readline()
    try:
        count = _header_of(head)
    except ManifestError:
        return None
    return Previous(storage, client, volume, sid, head, count) if head.endswith(b"\n") \
        else None


def keep(storage: Backend, client: str, volume: str, sid: str, tree: Path,
         changes: Changes, prev: Previous | None) -> BuildStats:
    """Write the manifest of ``tree`` (snapshot ``sid``, not yet visible, which nothing
    else writes) from what the walk found (``changes``), reusing ``prev``. On a backend
    whose snapshots are copies of a persistent tree (``Backend.copied_from``), a file
    that is not kept reuses the previous record of its path when ``_unchanged_copy``
    holds."""
    origin = storage.copied_from(client, volume)
    if prev is not None and prev.count == changes.kept == changes.files and \
            not changes.new and not changes.gone and prev.head == header(prev.count):
        # (a v1 header names its snapshot: such a manifest is merged, not linked)
        storage.link_manifest(client, volume, sid, prev.sid)
        return BuildStats(changes.files, changes.files, how="linked")
    data: bytes | None = None
    if prev is not None:
        data, stats = merge(tree, changes, prev, origin)
    if data is None:
        files = changes.new if not changes.kept else list(_all_files(tree))
        data, stats = build(tree, files, prev, changes.same_fs, changes.since_ns, origin)
    storage.write_manifest(client, volume, sid, data)
    return stats


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
    got = digest_all([str(tree / p) for p, _ in files], sum(st.st_size for _, st in files))
    stats.hashed_files += len(files)
    stats.hashed_bytes += sum(n for _, n in got)
    return [Record(p, st.st_ino, st.st_size, st.st_mtime_ns, d)
            for (p, st), (d, _) in zip(files, got, strict=True)]


def merge(tree: Path, changes: Changes, prev: Previous,
          origin: Path | None = None) -> tuple[bytes | None, BuildStats]:
    """The previous manifest with the gone paths cut out and the new files' records
    spliced in; (None, …) when the result would not list exactly the walk's files (the
    caller then builds it whole). ``changes.gone`` names a file as its path, a directory
    as its path and ``/`` (all that was below it)."""
    stats = BuildStats(changes.files, how="merged")
    data = prev.data
    if not data.startswith(prev.head) or not data.endswith(b"\n"):
        return None, stats
    keys: dict[str, int] = {}
    for g in changes.gone:
        keys[g] = 0
        if g.endswith("/"):
            keys[g[:-1] + "0"] = 0  # "0" follows "/": the end of what was below g
    for p, _ in changes.new:
        keys[p] = 0
    at = prev.body
    for k in sorted(keys):  # sorted keys: each search starts where the last one ended
        at = keys[k] = _seek(data, k, at)
    copied, unknown = [], []
    for p, st in changes.new:
        rec = _record_at(data, keys[p]) if origin is not None else None
        if rec is not None and _unchanged_copy(origin, p, st, rec, changes.since_ns):
            copied.append(Record(p, st.st_ino, st.st_size, st.st_mtime_ns, rec.digest))
        else:
            unknown.append((p, st))
    new = copied + _hash_new(tree, unknown, stats)
    cuts: list[tuple[int, int, str, bytes]] = []  # data[start:end] becomes the bytes
    for g in changes.gone:
        if g.endswith("/"):
            cuts.append((keys[g], keys[g[:-1] + "0"], g, b""))
        elif keys[g] < len(data) and _path_at(data, keys[g]) == g:
            cuts.append((keys[g], data.index(b"\n", keys[g]) + 1, g, b""))
    gone = set(changes.gone)
    for r in new:
        where = keys[r.path]
        if r.path not in gone and where < len(data) and _path_at(data, where) == r.path:
            return None, stats  # a new file the previous manifest lists: not a walk's find
        cuts.append((where, where, r.path, _line(r) + b"\n"))
    cuts.sort()
    out = [header(changes.files)]
    pos = prev.body
    removed = 0
    for start, end, _, inserted in cuts:
        if start < pos:
            return None, stats
        out.append(data[pos:start])
        out.append(inserted)
        removed += data.count(b"\n", start, end)
        pos = end
    out.append(data[pos:])
    if prev.count - removed + len(new) != changes.files:
        return None, stats
    stats.reused = changes.files - stats.hashed_files
    return b"".join(out), stats


def _record_at(data: bytes, at: int) -> Record | None:
    """The record whose line starts at ``at``; None past the end or for a damaged line."""
    if at >= len(data):
        return None
    end = data.index(b"\n", at)
    try:
        return _record(_load(data[at:end], 0), 0)
    except ManifestError:
        return None


def _path_at(data: bytes, at: int) -> str:
    """The path of the record line that starts at ``at``."""
    rec = _record_at(data, at)
    return "\U0010ffff" if rec is None else rec.path  # damage sorts last; merge's count
    # check then fails


def _line_start(data: bytes, lo: int, pos: int) -> int:
    """The start of the line holding byte ``pos``, at least ``lo`` (a line start)."""
    return max(lo, data.rfind(b"\n", lo, pos) + 1)


def _seek(data: bytes, key: str, lo: int) -> int:
    """The offset of the first record line at or after ``lo`` (a line start) whose path
    is ``key`` or sorts after it (``len(data)`` if none): a galloping then binary search
    over the sorted lines, parsing only the lines it probes."""
    n = len(data)
    if lo >= n or _path_at(data, lo) >= key:
        return lo
    hi, step = n, 1024  # the line at lo sorts before key; the answer is in (lo, hi]
    while lo + step < n:
        s = _line_start(data, lo, lo + step)
        if s > lo:
            if _path_at(data, s) >= key:
                hi = s
                break
            lo = s
        step *= 2
    while True:
        nxt = data.index(b"\n", lo) + 1
        if nxt >= hi:
            return hi
        s = _line_start(data, nxt, (nxt + hi) // 2)
        if _path_at(data, s) >= key:
            hi = s
        else:
            lo = s


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
