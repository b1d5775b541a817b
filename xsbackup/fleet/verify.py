"""A moved history checked against the source: its content manifests, and its metadata.

``fleet move-client`` copies the source's manifests (``volumes/V/manifests/ID.jsonl``,
written at promotion) with the snapshots. Two checks, both on one ordered walk of each
snapshot (``Tree``: ``os.scandir`` in name order, one ``lstat`` per directory, symlink and
distinct inode, never one per path):

* content (``verify``): each regular file a manifest lists must be, in the target's copy,
  a regular file of that size and mtime whose content has that BLAKE2b digest. Every
  distinct inode is read once, whatever the number of snapshots sharing it (the copy
  keeps the source's sharing), by a few threads (``hashlib`` releases the GIL while it
  hashes); a manifest line already checked in the snapshot before, on the same inode,
  is not checked again.
* metadata (``digests``): each snapshot's walk is folded into one BLAKE2b digest of every
  entry's name, type, mode, owner, size, mtime, symlink target and xattrs (those rsync
  ``-XX`` copies: all but ``system.*``), with each regular file's hardlink identity
  within the walk (its first name). The source computes it (``fleet tree-digest``, while
  the copy runs: its snapshots do not change) and the target the same over its copy, in
  the walk that checks the content: equal digests say what an rsync dry run against the
  source would (no entry missing, extra or different), without a second transfer of the
  file list.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from xsbackup.snapshots import manifest
from xsbackup.storage.base import Backend

Key = tuple[int, int]  # (device, inode) of a regular file


class Differs(Exception):
    """The copy of one snapshot is not what the source has (the message: where, why)."""


def _xattrs(path: str) -> bytes:
    """Every xattr of ``path`` (not followed) that rsync ``-XX`` copies, in name order."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattrs (or symlinks without them)
        return b""
    out = []
    for name in sorted(n for n in names if not n.startswith("system.")):
        value = os.getxattr(path, name, follow_symlinks=False)
        out.append(b"%s=%d:%s" % (name.encode(), len(value), value))
    return b" x " + b";".join(out) if out else b""


def _enc(rel: str) -> bytes:
    return rel.encode("utf-8", "surrogateescape")


class Tree:
    """One ordered walk over a volume's snapshots (each ``walk`` is the next snapshot):
    their digests, and every regular file's inode, size and mtime. ``owners``: the
    digests include each entry's owner and group (rsync keeps them only when the
    receiving end runs as root)."""

    def __init__(self, owners: bool = True) -> None:
        self.owners = owners
        self.first: dict[Key, bytes] = {}          # inode -> its first name, "k/rel"
        self.meta: dict[Key, tuple[int, int]] = {}  # inode -> (size, mtime_ns)
        self.index = 0

    def walk(self, top: Path) -> tuple[str, dict[str, Key]]:
        """(hex digest, each regular file's inode by its path relative to ``top``)."""
        k = self.index
        self.index += 1
        h = manifest.new_hash()
        files: dict[str, Key] = {}
        root = os.fspath(top)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise Differs(f"{top.name}: not a directory")
        dev = st.st_dev
        h.update(b"d . %o %s %d%s\n" % (st.st_mode, self._own(st), st.st_mtime_ns,
                                        _xattrs(root)))
        stack = [(root, "")]
        while stack:
            path, rel = stack.pop()
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            subdirs = []
            for e in entries:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_file(follow_symlinks=False):
                    key = (dev, e.inode())
                    first = self.first.get(key)
                    if first is None:
                        st = e.stat(follow_symlinks=False)
                        first = self.first[key] = b"%d/%s" % (k, _enc(r))
                        self.meta[key] = (st.st_size, st.st_mtime_ns)
                        h.update(b"f %s %o %s %d %d%s\n" % (
                            _enc(r), st.st_mode, self._own(st), st.st_size,
                            st.st_mtime_ns, _xattrs(e.path)))
                    else:
                        h.update(b"f %s = %s\n" % (_enc(r), first))
                    files[r] = key
                    continue
                st = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append((e.path, r))
                    what = b"d"
                elif stat.S_ISLNK(st.st_mode):
                    what = b"l " + os.fsencode(os.readlink(e.path))
                else:
                    what = b"o %d" % st.st_rdev
                h.update(b"%s %s %o %s %d%s\n" % (what, _enc(r), st.st_mode, self._own(st),
                                                  st.st_mtime_ns, _xattrs(e.path)))
            stack.extend(reversed(subdirs))
        return h.hexdigest(), files

    def _own(self, st: os.stat_result) -> bytes:
        return b"%d:%d" % (st.st_uid, st.st_gid) if self.owners else b"-"


def digests(tree_of: Callable[[str], Path], ids: Iterable[str], owners: bool = True
            ) -> Iterable[tuple[str, str]]:
    """(id, digest) of each snapshot of ``ids``, walked in that order (the source's side)."""
    tree = Tree(owners)
    for sid in ids:
        try:
            yield sid, tree.walk(tree_of(sid))[0]
        except OSError as e:
            raise Differs(f"{sid}: {e.strerror or e}") from None


def _digest(path: Path) -> str:
    try:
        return manifest.digest_at(str(path))[0]
    except OSError as e:
        return f"unreadable ({e.strerror or e})"


def verify(storage: Backend, tree_of: Callable[[str], Path], client: str, volume: str,
           ids: Iterable[str], done: Callable[[str], None], workers: int = 4, *,
           expected: Mapping[str, str] | None = None, base: str | None = None,
           without_manifest: Callable[[str], None] | None = None, owners: bool = True
           ) -> None:
    """Check each snapshot of ``ids`` (in order) against its manifest, calling ``done``
    with its id once it matches; ``Differs`` at the first snapshot that does not.

    ``expected``: the source's digests (``digests`` over ``base`` then ``ids``), each
    snapshot's metadata compared too. ``without_manifest``: called with a snapshot that
    has no manifest instead of failing (its caller compares its bytes). ``owners``: as
    ``Tree``'s, the same on both sides."""
    tree = Tree(owners)
    if base is not None:
        _compare(volume, base, tree, tree_of(base), expected)
    known: dict[Key, str] = {}  # inode -> the digest it must have (being hashed)
    cache: dict[bytes, manifest.Record] = {}  # a manifest line parsed once
    checked: dict[str, tuple[manifest.Record, Key]] = {}  # path -> the line checked there
    hashing: list[tuple[str, list[tuple[str, str, Future[str]]]]] = []  # per snapshot
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # The next snapshot is walked while the threads hash this one's new inodes.
        for sid in ids:
            top = tree_of(sid)
            files = _compare(volume, sid, tree, top, expected)
            try:
                data = manifest.read_bytes(storage, client, volume, sid)
                records = None if data is None else manifest.parse_lines(data, cache)
            except (manifest.ManifestError, OSError) as e:
                raise Differs(f"{volume}/{sid}: its manifest cannot be read ({e})") from None
            if records is None:
                if without_manifest is None:
                    raise Differs(f"{volume}/{sid}: has no manifest")
                without_manifest(sid)
                continue
            checked, new = _content(volume, sid, top, records, files, tree, known, checked)
            hashing.append((sid, [(want, path, pool.submit(_digest, top / path))
                                  for want, path in new]))
        for sid, jobs in hashing:
            for want, path, job in jobs:
                if job.result() != want:
                    raise Differs(f"{volume}/{sid}/{path}: content differs")
            done(sid)


def _compare(volume: str, sid: str, tree: Tree, top: Path,
             expected: Mapping[str, str] | None) -> dict[str, Key]:
    try:
        got, files = tree.walk(top)
    except OSError as e:
        raise Differs(f"{volume}/{sid}: {e.strerror or e}") from None
    if expected is not None and expected.get(sid) != got:
        raise Differs(f"{volume}/{sid}: its entries or metadata differ from the source's "
                      "(an rsync dry run against the source names them)")
    return files


def _content(volume: str, sid: str, top: Path, records: list[manifest.Record],
             files: dict[str, Key], tree: Tree, known: dict[Key, str],
             checked: dict[str, tuple[manifest.Record, Key]]
             ) -> tuple[dict[str, tuple[manifest.Record, Key]], list[tuple[str, str]]]:
    """One snapshot's records against its walk: what was checked, by path, and the new
    inodes to hash (the digest each must have, a path to it), now in ``known``."""
    now: dict[str, tuple[manifest.Record, Key]] = {}
    new: list[tuple[str, str]] = []
    for r in records:
        key = files.get(r.path)
        if key is None:
            why = "not a regular file" if os.path.lexists(top / r.path) else \
                os.strerror(2)
            raise Differs(f"{volume}/{sid}/{r.path}: {why}")
        now[r.path] = mine = (r, key)
        if checked.get(r.path) == mine:
            continue  # the same line on the same inode as in the snapshot before
        if tree.meta[key] != (r.size, r.mtime_ns):
            raise Differs(f"{volume}/{sid}/{r.path}: size or mtime differs")
        have = known.get(key)
        if have is None:
            known[key] = r.digest
            new.append((r.digest, r.path))
        elif have != r.digest:
            raise Differs(f"{volume}/{sid}/{r.path}: content differs")
    return now, new
