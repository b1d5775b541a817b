"""Content manifests: the BLAKE2b-256 of every stored regular file of a snapshot.

Written by the post-processor at promotion (``postprocess``), kept by the storage backend
beside the snapshot (``Backend.write_manifest``), never edited. ``integrity`` checks
snapshots against them; the ``manifest`` verb and the HTTP manifest show the digests.

**Cost.** The post-processor's one walk (``snapshot.compute_stats``) already lists every
regular file with its ``lstat``. A file whose inode, size and mtime equal an entry of the
previous snapshot's manifest is that snapshot's file (rsync ``--link-dest`` hardlinked it,
and the previous snapshot's link keeps the inode from being reused), so its digest is
copied; only the other files are read. A backup that changed nothing reads no content.

**Format** (``docs/manifest.md``): UTF-8 text, one JSON object per line. The first line
is the header ``{"format": "xsbackup-manifest", "version": 1, "algorithm":
"blake2b-256", "snapshot": ID, "files": N}``; then one line per regular file, sorted by
path (code points): ``{"p": PATH, "i": INODE, "s": SIZE, "m": MTIME_NS, "d": HEX_DIGEST}``, where a
path that is not valid UTF-8 is given as ``"x": HEX_OF_ITS_BYTES`` instead of ``"p"``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import orjson

from xsbackup.storage.base import Backend

FORMAT = "xsbackup-manifest"
VERSION = 1
ALGORITHM = "blake2b-256"
O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


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
    reused: int = 0         # digests copied from the previous snapshot's manifest
    hashed_files: int = 0   # files read and hashed
    hashed_bytes: int = 0   # bytes read and hashed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ---- hashing -----------------------------------------------------------------------------


def new_hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=32)


def digest_fd(fd: int) -> tuple[str, int]:
    """(hex digest, bytes read) of the open file ``fd`` from its current offset."""
    h = new_hash()
    n = 0
    # A buffer the file's size (up to 1 MiB): a small file costs no 1 MiB allocation.
    buf = bytearray(min(1 << 20, max(os.fstat(fd).st_size + 1, 1 << 12)))
    view = memoryview(buf)
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


# ---- encoding ----------------------------------------------------------------------------


def _line(r: Record) -> bytes:
    try:
        return orjson.dumps({"p": r.path, "i": r.inode, "s": r.size, "m": r.mtime_ns,
                             "d": r.digest})
    except orjson.JSONEncodeError:  # a name that is not UTF-8 (surrogate escapes)
        return orjson.dumps({"x": os.fsencode(r.path).hex(), "i": r.inode, "s": r.size,
                             "m": r.mtime_ns, "d": r.digest})


def _header(sid: str, files: int) -> bytes:
    return orjson.dumps({"format": FORMAT, "version": VERSION, "algorithm": ALGORITHM,
                         "snapshot": sid, "files": files}) + b"\n"


def encode(sid: str, records: Iterable[Record]) -> bytes:
    rows = sorted(records)  # by path first: code points, a non-UTF-8 byte as its escape
    return _header(sid, len(rows)) + b"".join(_line(r) + b"\n" for r in rows)


def parse(fh: IO[bytes]) -> Iterator[Record]:
    """The records of a manifest stream; ManifestError when it is damaged or cut short."""
    head = _load(fh.readline(), 1)
    if head.get("format") != FORMAT or head.get("version") != VERSION:
        raise ManifestError("line 1 is not an xsbackup manifest header")
    want = head.get("files")
    n = 0
    for n, raw in enumerate(fh, start=1):
        row = _load(raw, n + 1)
        try:
            path = row["p"] if "p" in row else os.fsdecode(bytes.fromhex(row["x"]))
            rec = Record(path, int(row["i"]), int(row["s"]), int(row["m"]), str(row["d"]))
        except (KeyError, ValueError, TypeError):
            raise ManifestError(f"line {n + 1} is not a manifest record") from None
        yield rec
    if n != want:
        raise ManifestError(f"the header announces {want} files, the manifest lists {n}")


def _load(raw: bytes, lineno: int) -> dict[str, Any]:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError(f"line {lineno} is not JSON") from None
    if not isinstance(row, dict):
        raise ManifestError(f"line {lineno} is not a JSON object")
    return row


def read(storage: Backend, client: str, volume: str, sid: str) -> list[Record] | None:
    """Every record of the snapshot's manifest; None when it has none. ManifestError
    when it is damaged."""
    fh = storage.open_manifest(client, volume, sid)
    if fh is None:
        return None
    with fh:
        return list(parse(fh))


# ---- building ----------------------------------------------------------------------------


@dataclass
class Reusable:
    """A previous snapshot's manifest for ``build`` to copy from: its records by inode,
    how many it has, and its bytes after the header."""

    by_inode: dict[int, Record] = field(default_factory=dict)
    count: int = 0
    body: bytes = b""


def reusable(storage: Backend, client: str, volume: str, sid: str | None) -> Reusable:
    """Snapshot ``sid``'s manifest, for ``build``; empty when there is no such snapshot
    or manifest, or it is damaged (everything is then hashed)."""
    fh = storage.open_manifest(client, volume, sid) if sid is not None else None
    if fh is None:
        return Reusable()
    with fh:
        data = fh.read()
    try:
        records = list(parse(io.BytesIO(data)))
    except ManifestError:
        return Reusable()
    return Reusable({r.inode: r for r in records}, len(records),
                    data[data.index(b"\n") + 1:])


def build(tree: Path, sid: str, files: Iterable[tuple[str, os.stat_result]],
          previous: Reusable) -> tuple[bytes, BuildStats]:
    """The manifest of ``tree`` (a snapshot not yet visible, which nothing else writes)
    from its regular files ``(relative path, lstat)``: digests copied from ``previous``
    where inode, size and mtime agree, the other files read. When every file is one of
    ``previous``'s records at the same path, and there are as many, the records are the
    same, and so are their bytes: ``previous``'s are copied, not encoded again."""
    stats = BuildStats()
    records = []
    same = True
    by_inode = previous.by_inode
    for rel, st in files:
        old = by_inode.get(st.st_ino)
        if old is not None and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            digest = old.digest
            stats.reused += 1
            same = same and old.path == rel
        else:
            digest, n = digest_at(str(tree / rel))
            stats.hashed_files += 1
            stats.hashed_bytes += n
            same = False
        stats.files += 1
        records.append(Record(rel, st.st_ino, st.st_size, st.st_mtime_ns, digest))
    if same and stats.files == previous.count:
        return _header(sid, stats.files) + previous.body, stats
    return encode(sid, records), stats
