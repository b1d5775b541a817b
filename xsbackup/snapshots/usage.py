"""Hardlink-aware disk usage: what each snapshot really costs (``xsbackup du``).

For every snapshot of a client:

* **apparent** bytes: the sum of its regular files' sizes, as the client sees them;
* **exclusive** bytes: the space deleting only that snapshot would free: allocated
  blocks of its directories, of its files with one link, and of every inode all of
  whose links lie inside that snapshot;
* **shared** bytes: the apparent bytes of files whose inode is also linked from
  anywhere else (another snapshot, a transfer in progress, ...).

Per client, **total** is the allocated size of every distinct inode in its snapshots.

One walk per client, each inode counted once. Only inodes with more than one link are
remembered (a few dozen bytes each), so memory is bounded by the number of distinct
shared inodes, never by the number of paths. An inode with links outside the walked
snapshots (``st_nlink`` larger than the links seen) is never exclusive.

Results are cached in ``clients/<SN>/usage.json``, keyed by the exact list of the
client's snapshots, so any new snapshot or prune invalidates them. They are not cached in
snapshot xattrs, although the first plan said so: DESIGN.md section 8 makes a visible
snapshot's xattrs immutable, and a neighbour's prune changes its exclusive size.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from xsbackup.store import Store, atomic_write

Progress = Callable[[str, str], None]  # (volume, snapshot id) as each snapshot starts


@dataclass
class SnapshotUsage:
    volume: str
    id: str
    files: int = 0
    apparent: int = 0
    exclusive: int = 0
    shared: int = 0


@dataclass
class ClientUsage:
    client: str
    total: int = 0                       # allocated bytes of every distinct inode
    apparent: int = 0
    snapshots: list[SnapshotUsage] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClientUsage:
        snaps = [SnapshotUsage(**s) for s in data.get("snapshots", [])]
        return cls(data["client"], data.get("total", 0), data.get("apparent", 0), snaps)

    def exclusive_of(self, volume: str, sid: str) -> int:
        for s in self.snapshots:
            if s.volume == volume and s.id == sid:
                return s.exclusive
        return 0


def _cache_key(store: Store, client: str) -> str:
    h = hashlib.sha256()
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            h.update(f"{volume}/{sid}\n".encode())
    return h.hexdigest()


def measure(store: Store, client: str, progress: Progress | None = None) -> ClientUsage:
    """Walk every snapshot of ``client`` once and compute its usage."""
    result = ClientUsage(client)
    snaps: list[SnapshotUsage] = []
    # inode -> [owner snapshot index (-1: several), links seen, allocated, apparent, nlink,
    #           is regular]
    shared_inodes: dict[tuple[int, int], list[int]] = {}
    trust_inode = True  # readdir's d_ino equals st_ino (not so on some overlayfs)
    exclusive_apparent: list[int] = []  # per snapshot: apparent bytes only it holds
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            if progress is not None:
                progress(volume, sid)
            su = SnapshotUsage(volume, sid)
            idx = len(snaps)
            snaps.append(su)
            exclusive_apparent.append(0)
            top = str(store.snapshots_dir(client, volume) / sid)
            try:
                stack = [(top, os.stat(top).st_dev)]
            except OSError:
                continue
            while stack:
                d, dev = stack.pop()
                try:
                    it = os.scandir(d)
                except OSError:
                    continue
                with it:
                    for e in it:
                        if trust_inode and not e.is_dir(follow_symlinks=False):
                            # An inode counted already needs no stat: readdir gave its number.
                            seen = shared_inodes.get((dev, e.inode()))
                            if seen is not None:
                                su.files += 1
                                if seen[5]:
                                    su.apparent += seen[3]
                                seen[1] += 1
                                if seen[0] != idx:
                                    seen[0] = -1
                                continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if st.st_ino != e.inode():
                            trust_inode = False
                        alloc = st.st_blocks * 512
                        if stat.S_ISDIR(st.st_mode):
                            su.exclusive += alloc
                            result.total += alloc
                            stack.append((e.path, st.st_dev))
                            continue
                        su.files += 1
                        if stat.S_ISREG(st.st_mode):
                            su.apparent += st.st_size
                        if st.st_nlink <= 1:
                            su.exclusive += alloc
                            result.total += alloc
                            if stat.S_ISREG(st.st_mode):
                                exclusive_apparent[idx] += st.st_size
                            continue
                        key = (st.st_dev, st.st_ino)
                        entry = shared_inodes.get(key)
                        if entry is None:
                            shared_inodes[key] = [idx, 1, alloc, st.st_size, st.st_nlink,
                                                  int(stat.S_ISREG(st.st_mode))]
                            result.total += alloc
                        else:
                            entry[1] += 1
                            if entry[0] != idx:
                                entry[0] = -1
    for owner, links, alloc, size, nlink, _ in shared_inodes.values():
        if owner >= 0 and links >= nlink:
            snaps[owner].exclusive += alloc
            exclusive_apparent[owner] += size
    # Shared: apparent bytes of files whose inode is linked from elsewhere too.
    for su, own in zip(snaps, exclusive_apparent, strict=True):
        su.shared = su.apparent - own
    result.snapshots = snaps
    result.apparent = sum(s.apparent for s in snaps)
    return result


def cached(store: Store, client: str, progress: Progress | None = None,
           refresh: bool = False) -> ClientUsage:
    """``measure`` through the cache in ``clients/<SN>/usage.json``."""
    path = store.client_dir(client) / "usage.json"
    key = _cache_key(store, client)
    if not refresh:
        try:
            data = orjson.loads(path.read_bytes())
            if data.get("key") == key:
                return ClientUsage.from_dict(data["usage"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            pass
    usage = measure(store, client, progress)
    if store.client_dir(client).is_dir():
        atomic_write(path, orjson.dumps({"key": key, "usage": usage.as_dict()}), sync=False)
    return usage


def invalidate(store: Store, client: str) -> None:
    (store.client_dir(client) / "usage.json").unlink(missing_ok=True)
