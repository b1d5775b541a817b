"""The hardlink backend's ``measure``: a hardlink-aware ``du`` of one client.

One walk per client, each inode counted once. Only inodes with more than one link are
remembered (a few dozen bytes each), so memory is bounded by the number of distinct
shared inodes, never by the number of paths. An inode with links outside the walked
trees (``st_nlink`` larger than the links seen) is never exclusive. An inode already
counted is recognised by readdir's ``d_ino`` and not ``lstat``-ed again (95% of the
paths of a typical history).

Besides its snapshots, a client owns its transfers that are not snapshots yet: completed
ones waiting in ``incoming/``, the running one in ``current/``, and what interrupted ones
left for resuming (``current/`` or ``resume/``, rsync's partial and temporary files).
They are walked too, as one more unit: the client's total counts them, and ``pending``
is what only they hold. Without them, a client's abandoned transfer would count as
nobody's, and the fair-share quota would trim another client for it.
"""

from __future__ import annotations

import os
import stat

from xsbackup.storage.base import ClientUsage, MeasureProgress, SnapshotUsage
from xsbackup.store import Store

# A volume's trees that are the client's but not snapshots (besides ``incoming/<id>``):
# the transfer tree, running or interrupted, and rsync's partial and temporary files.
RESUMABLE = ("current", "resume")
SCRATCH = ("partial", "tmp")
PENDING_TREES = RESUMABLE + SCRATCH


class _Walk:
    def __init__(self) -> None:
        self.units: list[SnapshotUsage] = []
        self.own_apparent: list[int] = []  # per unit: apparent bytes only it holds
        # inode -> [owner unit (-1: several), links seen, allocated, apparent, nlink,
        #           is regular]
        self.shared: dict[tuple[int, int], list[int]] = {}
        self.trust_inode = True  # readdir's d_ino equals st_ino (not so on some overlayfs)
        self.total = 0

    def unit(self, su: SnapshotUsage) -> int:
        self.units.append(su)
        self.own_apparent.append(0)
        return len(self.units) - 1

    def tree(self, top: str, idx: int) -> None:
        su = self.units[idx]
        try:
            stack = [(top, os.stat(top).st_dev)]
        except OSError:
            return
        shared = self.shared  # the loop below runs per path: locals, not attributes
        trust_inode = self.trust_inode
        total = 0
        own_apparent = 0
        while stack:
            d, dev = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for e in it:
                    if trust_inode and not e.is_dir(follow_symlinks=False):
                        # An inode counted already needs no stat: readdir named it.
                        seen = shared.get((dev, e.inode()))
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
                        total += alloc
                        stack.append((e.path, st.st_dev))
                        continue
                    su.files += 1
                    regular = stat.S_ISREG(st.st_mode)
                    if regular:
                        su.apparent += st.st_size
                    if st.st_nlink <= 1:
                        su.exclusive += alloc
                        total += alloc
                        if regular:
                            own_apparent += st.st_size
                        continue
                    key = (st.st_dev, st.st_ino)
                    entry = shared.get(key)
                    if entry is None:
                        shared[key] = [idx, 1, alloc, st.st_size, st.st_nlink,
                                       int(regular)]
                        total += alloc
                    else:
                        entry[1] += 1
                        if entry[0] != idx:
                            entry[0] = -1
        self.trust_inode = trust_inode
        self.total += total
        self.own_apparent[idx] += own_apparent

    def finish(self) -> None:
        for owner, links, alloc, size, nlink, is_reg in self.shared.values():
            if owner >= 0 and links >= nlink:  # every link inside that one unit
                self.units[owner].exclusive += alloc
                if is_reg:
                    self.own_apparent[owner] += size * links
        # Shared: apparent bytes of files whose inode is linked from elsewhere too.
        for su, own in zip(self.units, self.own_apparent, strict=True):
            su.shared = su.apparent - own


def measure(store: Store, client: str, progress: MeasureProgress | None = None) -> ClientUsage:
    walk = _Walk()
    snaps: list[SnapshotUsage] = []
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            if progress is not None:
                progress(volume, sid)
            su = SnapshotUsage(volume, sid)
            snaps.append(su)
            walk.tree(str(store.snapshots_dir(client, volume) / sid), walk.unit(su))
    pending = walk.unit(SnapshotUsage("", "pending"))
    for volume in store.volumes(client):
        vol = store.volume_dir(client, volume)
        trees = [vol / "incoming" / sid for sid in store.incoming_ids(client, volume)]
        trees += [vol / name for name in PENDING_TREES]
        for tree in trees:
            if tree.is_dir() and not tree.is_symlink():
                walk.tree(str(tree), pending)
    walk.finish()
    return ClientUsage(client, walk.total, sum(s.apparent for s in snaps), snaps,
                       walk.units[pending].exclusive)
