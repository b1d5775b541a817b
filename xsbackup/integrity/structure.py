"""``check``'s structure half: what a client volume's directories say, no file read.

* ``latest`` names a snapshot that exists and is complete (it has its facts);
* every visible snapshot has its facts and its content manifest;
* nothing else is visible in ``snapshots/`` (a symlink, a stray name, a file);
* ``incoming/``, the queue and ``trash/`` agree: every ``incoming/<id>`` has a queue
  entry, every entry a transfer or a snapshot, no id is both waiting and visible, and no
  snapshot is both visible and in ``trash/``;
* every manifest belongs to a snapshot.

Nothing here writes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Any

from xsbackup.context import Context
from xsbackup.snapshots import queue
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import SNAPSHOT_RE

# Findings that mean stored data differs from what was recorded; the rest are structure.
DAMAGE = frozenset({"content", "unreadable", "size", "mtime", "missing", "replaced",
                    "unlisted", "manifest-damaged"})


@dataclass
class Finding:
    kind: str
    client: str
    volume: str
    snapshot: str = ""                 # the snapshot concerned ("" for the volume)
    path: str = ""                     # the file, for content findings
    detail: str = ""
    snapshots: list[str] = field(default_factory=list)  # every one sharing the inode

    @property
    def damage(self) -> bool:
        return self.kind in DAMAGE

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "damage": self.damage}

    def line(self) -> str:
        where = f"{self.client}/{self.volume}" + (f"/{self.snapshot}" if self.snapshot else "")
        path = f" {self.path!r}" if self.path else ""
        shared = f" (in snapshots {', '.join(self.snapshots)})" if self.snapshots else ""
        return f"{'DAMAGE' if self.damage else 'problem'} {self.kind}: {where}{path}: " \
               f"{self.detail}{shared}"


def check_volume(ctx: Context, client: str, volume: str) -> list[Finding]:
    store, storage = ctx.store, ctx.storage
    out: list[Finding] = []

    def add(kind: str, sid: str, detail: str) -> None:
        out.append(Finding(kind, client, volume, sid, detail=detail))

    snaps_dir = store.snapshots_dir(client, volume)
    try:
        names = sorted(os.listdir(snaps_dir))
    except FileNotFoundError:
        names = []
    visible = []
    for name in names:
        st = os.lstat(snaps_dir / name)
        if SNAPSHOT_RE.fullmatch(name) and stat.S_ISDIR(st.st_mode):
            visible.append(name)
        elif not name.startswith("."):
            add("stray-entry", "", f"snapshots/{name} is not a snapshot directory")
    for sid in visible:
        if not read_facts(snaps_dir / sid).get("created"):
            add("incomplete", sid, "visible without its facts (a partial promotion)")
    have_manifest = set(storage.manifest_ids(client, volume))
    for sid in visible:
        if sid not in have_manifest:
            add("missing-manifest", sid, "no content manifest (xsbackup check "
                "--repair-manifests writes one)")
    for sid in sorted(have_manifest - set(visible)):
        add("orphaned-manifest", sid, "a manifest whose snapshot is gone")
    latest_link = store.volume_dir(client, volume) / "latest"
    if os.path.lexists(latest_link):
        target = store.latest_id(client, volume)
        if target is None or target not in visible:
            add("dangling-latest", target or "",
                f"latest points at {os.readlink(latest_link)!r}, which is not a snapshot")
        elif not read_facts(snaps_dir / target).get("created"):
            add("dangling-latest", target, "latest points at an incomplete snapshot")
    elif visible:
        add("dangling-latest", "", "the volume has snapshots but no latest link")
    queued = {e.id for e in queue.pending(store) if e.client == client and e.volume == volume}
    waiting = store.incoming_ids(client, volume)
    for sid in waiting:
        if sid not in queued:
            add("orphaned-incoming", sid, "incoming/ holds a transfer no queue entry names")
        if sid in visible:
            add("incoming-and-visible", sid, "both waiting in incoming/ and visible")
    for sid in sorted(queued - set(waiting) - set(visible)):
        add("queue-without-transfer", sid, "a queue entry names no transfer or snapshot")
    for sid in sorted(storage.deleted_ids(client, volume) & set(visible)):
        add("trash-and-visible", sid, "both visible and deleted into trash/")
    return out
