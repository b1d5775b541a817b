"""A moved history checked against the source's content manifests, on the target.

``fleet move-client`` copies the source's manifests (``volumes/V/manifests/ID.jsonl``,
written at promotion) with the snapshots. Each regular file a manifest lists must be, in
the target's copy, a regular file of that size and mtime whose content has that BLAKE2b
digest. Every distinct inode is read once, whatever the number of snapshots sharing it
(the copy keeps the source's sharing), by a few threads (``hashlib`` releases the GIL
while it hashes). Which other entries exist, their types, modes, owners, links and
xattrs are rsync's part: the move compares those with a dry run against the source.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xsbackup.snapshots import manifest
from xsbackup.storage.base import Backend


class Differs(Exception):
    """The copy of one snapshot is not what its manifest says (the message: where, why)."""


def _digest(path: Path) -> str:
    try:
        return manifest.digest_at(str(path))[0]
    except OSError as e:
        return f"unreadable ({e.strerror or e})"


def verify(storage: Backend, tree_of: Callable[[str], Path], client: str, volume: str,
           ids: Iterable[str], done: Callable[[str], None], workers: int = 4) -> None:
    """Check each snapshot of ``ids`` (in order) against its manifest, calling ``done``
    with its id once it matches; ``Differs`` at the first snapshot that does not."""
    known: dict[tuple[int, int], str] = {}  # (device, inode) -> digest, hashed here
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for sid in ids:
            _one(storage, tree_of(sid), client, volume, sid, known, pool)
            done(sid)


def _one(storage: Backend, tree: Path, client: str, volume: str, sid: str,
         known: dict[tuple[int, int], str], pool: ThreadPoolExecutor) -> None:
    try:
        records = manifest.read(storage, client, volume, sid)
    except (manifest.ManifestError, OSError) as e:
        raise Differs(f"{volume}/{sid}: its manifest cannot be read ({e})") from None
    if records is None:
        raise Differs(f"{volume}/{sid}: has no manifest")
    expect: dict[tuple[int, int], tuple[str, str]] = {}  # new inode -> (digest, path)
    for r in records:
        try:
            st = os.lstat(tree / r.path)
        except OSError as e:
            raise Differs(f"{volume}/{sid}/{r.path}: {e.strerror or e}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Differs(f"{volume}/{sid}/{r.path}: not a regular file")
        if st.st_size != r.size or st.st_mtime_ns != r.mtime_ns:
            raise Differs(f"{volume}/{sid}/{r.path}: size or mtime differs")
        key = (st.st_dev, st.st_ino)
        have = known.get(key) or expect.get(key, (None,))[0]
        if have is None:
            expect[key] = (r.digest, r.path)
        elif have != r.digest:
            raise Differs(f"{volume}/{sid}/{r.path}: content differs")
    keys = list(expect)
    for key, got in zip(keys, pool.map(lambda k: _digest(tree / expect[k][1]), keys),
                        strict=True):
        want, path = expect[key]
        if got != want:
            raise Differs(f"{volume}/{sid}/{path}: content differs")
        known[key] = got
