"""Bringing snapshots back from the repository: one (``restore``) or every one (``rebuild``).

**Restore** finds the restic snapshot by its tags (``--at``: ``latest``, a snapshot id, or
an ISO time meaning the newest at or before it) and restores it as a new transfer of the
volume would arrive, through the storage backend's seam: under the client's ingest lock,
``Backend.prepare`` gives the ``current/`` tree, ``restic restore`` fills it (bytes, the
stored modes and mtimes, and the ``user.rsync.%stat`` records that hold the client's
modes, owners and symlinks), the top directory gets its attributes back from the
``root:`` tag, ``Backend.complete`` makes it ``incoming/<id>`` under its original id, and
the post-processor promotes it (stats, facts, ``latest``). Files are not hardlinked to
neighbouring snapshots (restic knows nothing of them); the next backup links to it again.
What an interrupted transfer of that volume left for resuming is given up (``prepare``
makes a fresh ``current/``): the client's next backup sends those files again.

**Rebuild** (the disaster case: the state root is gone) restores the registry from its
copy in the repository (``registry``: the records with their keys, backed up at every
replication run as one JSON document; restic encrypts it), then every client's every
snapshot that is not already in the store, oldest first, and records each as replicated.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xsbackup.context import Context
from xsbackup.errors import InvalidName, SnapshotNotFound, XsbackupError
from xsbackup.locking import client_lock
from xsbackup.logs import LOG
from xsbackup.offsite import state
from xsbackup.offsite.restic import Restic, Snapshot
from xsbackup.restore.access import FAKE_SUPER
from xsbackup.restore.resolve import at_or_before, exists
from xsbackup.snapshots import postprocess, queue
from xsbackup.store import SNAPSHOT_RE, check_client, check_volume, snapshot_sort_key

Progress = Callable[[str], None]


@dataclass
class Restored:
    client: str
    volume: str
    id: str
    restic_id: str

    def as_dict(self) -> dict[str, str]:
        return {"client": self.client, "volume": self.volume, "id": self.id,
                "restic_id": self.restic_id}


@dataclass
class RebuildReport:
    clients: list[str] = field(default_factory=list)
    restored: list[Restored] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    differing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"clients": self.clients, "restored": [r.as_dict() for r in self.restored],
                "skipped": self.skipped, "files": self.files, "differing": self.differing}


def offsite_snapshots(listing: list[Snapshot], client: str,
                      volume: str | None = None) -> dict[str, dict[str, Snapshot]]:
    """volume -> snapshot id -> its newest restic snapshot, for ``client``."""
    out: dict[str, dict[str, Snapshot]] = {}
    for snap in listing:
        vol, sid = snap.tag("volume"), snap.tag("snapshot")
        if snap.host == client and vol and sid and SNAPSHOT_RE.fullmatch(sid) and \
                (volume is None or vol == volume):
            out.setdefault(vol, {})[sid] = snap
    return out


def resolve(listing: list[Snapshot], client: str, volume: str | None,
            at: str | None) -> tuple[str, Snapshot]:
    """(volume, restic snapshot) that ``volume`` and ``at`` name among ``client``'s."""
    found = offsite_snapshots(listing, check_client(client),
                              check_volume(volume) if volume else None)
    if not found:
        raise SnapshotNotFound(f"{client} has no off-site snapshot"
                               + (f" of {volume}" if volume else ""))
    if volume is None:
        if len(found) > 1:
            raise InvalidName(f"{client} has several volumes off-site "
                              f"({', '.join(sorted(found))}); choose one with --volume")
        volume = next(iter(found))
    ids = sorted(found[volume], key=snapshot_sort_key)
    if at is None or at in ("", "latest"):
        return volume, found[volume][ids[-1]]
    if SNAPSHOT_RE.fullmatch(at):
        if at not in found[volume]:
            raise SnapshotNotFound(f"no off-site snapshot {at} of {volume}")
        return volume, found[volume][at]
    chosen = at_or_before(ids, at)
    if chosen is None:
        raise SnapshotNotFound(f"no off-site snapshot of {volume} at or before {at}")
    return volume, found[volume][chosen]


def _set_root(path: str, snap: Snapshot) -> None:
    """Give the restored top directory the attributes its ``root:`` tag recorded."""
    value = snap.tag("root")
    if not value:
        return
    mode, mtime, raw = value.split(":", 2)
    if raw != "-":
        os.setxattr(path, FAKE_SUPER, bytes.fromhex(raw), follow_symlinks=False)
    os.chmod(path, int(mode, 8))
    os.utime(path, ns=(int(mtime), int(mtime)), follow_symlinks=False)


def restore_snapshot(ctx: Context, restic: Restic, client: str, volume: str,
                     snap: Snapshot) -> Restored:
    """Restore one restic snapshot into the store under its original id and promote it."""
    sid = snap.tag("snapshot") or ""
    store = ctx.store
    if exists(store, client, volume, sid) or sid in store.incoming_ids(client, volume):
        raise XsbackupError(f"snapshot {volume}/{sid} of {client} is already in the store")
    store.client_dir(client).mkdir(parents=True, exist_ok=True)
    with client_lock(store.locks_dir, client).acquire(), \
            ctx.storage.prepare(client, volume) as target:
        try:
            restic.run(["restore", snap.id, "--target", str(target.path)],
                       why=f"restore {client} {volume}/{sid} from off-site")
            _set_root(str(target.path), snap)
        except BaseException:
            # Half a restored tree is no interrupted transfer of the client's to resume.
            target.close()
            ctx.storage.discard_partial(client, volume)
            raise
        ctx.storage.complete(target, sid)
        path = queue.write(store, sid, client, volume, {"offsite": snap.id})
    entry = queue.read(path)
    if entry is not None:
        postprocess.process(ctx, entry)
    rec = state.load_client(store, client)
    rec.replicated[rec.key(volume, sid)] = snap.id
    state.save_client(store, rec)
    LOG.info("client=%s volume=%s snapshot=%s restored from off-site (%s)", client, volume,
             sid, snap.short_id)
    return Restored(client, volume, sid, snap.id)


def restore(ctx: Context, client: str, volume: str | None, at: str | None) -> Restored:
    """``xsbackup offsite restore``: one snapshot back into the store."""
    restic = Restic(ctx.settings.offsite, ctx.store)
    with state.acquire(ctx.store):
        vol, snap = resolve(restic.snapshots(client), client, volume, at)
        return restore_snapshot(ctx, restic, client, vol, snap)


def ensure_local(ctx: Context, client: str, volume: str | None,
                 at: str | None) -> tuple[str, str]:
    """(volume, id) of the off-site snapshot ``volume`` and ``at`` name, restored into
    the store first unless it is there already (``restore archive --from offsite``)."""
    restic = Restic(ctx.settings.offsite, ctx.store)
    with state.acquire(ctx.store):
        vol, snap = resolve(restic.snapshots(client), client, volume, at)
        sid = snap.tag("snapshot") or ""
        if not exists(ctx.store, client, vol, sid):
            restore_snapshot(ctx, restic, client, vol, snap)
    return vol, sid


def rebuild(ctx: Context, progress: Progress | None = None) -> RebuildReport:
    """Recreate every client and snapshot of the repository missing from the store."""
    from xsbackup.offsite import registry_copy

    restic = Restic(ctx.settings.offsite, ctx.store)
    report = RebuildReport()
    with state.acquire(ctx.store):
        listing = restic.snapshots()
        copied = registry_copy.restore(ctx, restic, listing)
        report.clients, report.files, report.differing = (
            copied.clients, copied.files, copied.differing)
        hosts = sorted({s.host for s in listing if s.tag("snapshot")})
        for client in hosts:
            if not ctx.registry.exists(client):
                report.skipped.append(f"{client}: not in the registry copy")
                continue
            for vol, snaps in sorted(offsite_snapshots(listing, client).items()):
                for sid in sorted(snaps, key=snapshot_sort_key):
                    if exists(ctx.store, client, vol, sid):
                        continue
                    if progress is not None:
                        progress(f"{client} {vol}/{sid}")
                    with contextlib.suppress(FileExistsError):
                        report.restored.append(
                            restore_snapshot(ctx, restic, client, vol, snaps[sid]))
    return report
