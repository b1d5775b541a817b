"""``xsbackup find``: which snapshots hold a path, and which versions of it differ.

A pattern with a ``/`` is matched (shell glob, ``fnmatch``, case-sensitive) against the
whole path below the snapshot; one without, against the last component, as ``restic
find`` does. Every snapshot of the volume (the ``newest`` ones only, when given) is
walked through ``restore.archive.walk`` (descriptors, nothing followed, shared flocks).
Matches of one path are grouped into *versions*: a regular file or symlink by its
content (the manifest's digest, or the bytes read where there is none), anything else by
its type. Each version lists the snapshots that hold it, oldest first.
"""

from __future__ import annotations

import fnmatch
import re
import stat
from dataclasses import dataclass, field
from typing import Any

from xsbackup.context import Context
from xsbackup.errors import SnapshotNotFound
from xsbackup.integrity import content
from xsbackup.integrity.diff import type_name
from xsbackup.restore import resolve
from xsbackup.restore.access import OpenSnapshot
from xsbackup.restore.archive import walk
from xsbackup.snapshots import manifest


@dataclass
class Version:
    type: str
    size: int | None = None
    blake2b: str | None = None
    mtime: int = 0                   # of its newest snapshot
    snapshots: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "size": self.size, "blake2b": self.blake2b,
                "mtime": self.mtime, "snapshots": self.snapshots}


@dataclass
class Match:
    volume: str
    path: str
    versions: list[Version] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"volume": self.volume, "path": self.path,
                "versions": [v.as_dict() for v in self.versions]}


def matcher(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def find(ctx: Context, client: str, pattern: str, volume: str | None = None,
         newest: int | None = None) -> list[Match]:
    """Every path of the client's snapshots that matches ``pattern``, sorted by volume
    and path."""
    store = ctx.store
    rx = matcher(pattern)
    whole = "/" in pattern
    volumes = [resolve.pick_volume(store, client, volume)] if volume else store.volumes(client)
    out: list[Match] = []
    for vol in volumes:
        sids = resolve.snapshot_ids(store, client, vol)
        if volume and not sids:  # as every reader answers for a volume it has not
            raise SnapshotNotFound(f"{vol} has no snapshot yet")
        if newest is not None:
            sids = sids[-newest:] if newest > 0 else []
        found: dict[str, dict[tuple[str, str], Version]] = {}
        for sid in sids:
            try:
                digests = {r.path: r for r in
                           manifest.read(ctx.storage, client, vol, sid) or []}
            except manifest.ManifestError:
                digests = {}
            with OpenSnapshot(store, client, vol, sid) as snap:
                for item in walk(snap.fd):
                    if not rx.fullmatch(item.path if whole else item.name):
                        continue
                    kind = type_name(item.mode)
                    size = digest = None
                    if stat.S_ISREG(item.st.st_mode) and not stat.S_ISDIR(item.mode):
                        digest = content.digest(item.path, item.name, item.dir_fd, item.st,
                                                digests)
                        size = item.st.st_size if kind == "file" else None
                    versions = found.setdefault(item.path, {})
                    v = versions.setdefault((kind, digest or ""),
                                            Version(kind, size, digest))
                    v.snapshots.append(sid)
                    v.mtime = int(item.st.st_mtime)
        out += [Match(vol, path, list(vs.values())) for path, vs in sorted(found.items())]
    return out

