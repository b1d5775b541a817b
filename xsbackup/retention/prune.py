"""Prune: carry out retention plans and the fair-share soft quota (DESIGN.md section 6).

The math is in ``retention`` (pure); this module only applies it, safely:

* a client's newest snapshot is never deleted, whatever the policy says;
* a client with a transfer running (its ingest lock is held) is skipped this time, so
  the ``--link-dest`` base of a running transfer is never touched;
* a snapshot being read (a restore holds a shared flock on it) cannot be locked
  exclusively and is skipped, and the report says so;
* deletion is lazy and crash-safe: under the client's locks a snapshot is only renamed
  into ``trash/`` (one fast ``rename``); the files are deleted afterwards, outside any
  lock, and whatever a killed run left in ``trash/`` is finished by the next run (or by
  ``serve``'s scheduler).

The soft quota, as the original server meant it: above ``quota.soft_quota_pct`` of the
state root's blocks or inodes, trim in rounds; each round every client whose usage (its
hardlink-aware total) is over its fair share (the quota divided by the number of
clients) loses its oldest prunable snapshot, heaviest client first. It stops when the
filesystem is under the quota or when nothing prunable is left, and reports which.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xsbackup import procs
from xsbackup.clients.registry import Client
from xsbackup.config import RetentionSettings, Settings
from xsbackup.context import Context
from xsbackup.errors import LockBusy
from xsbackup.locking import FileLock, client_lock, lock_directory, postprocess_lock
from xsbackup.logs import LOG
from xsbackup.retention import policy as retention
from xsbackup.snapshots import usage
from xsbackup.store import DiskUse, Store, disk_use, fsync_dir, set_xattrs, snapshot_time

Progress = Callable[[int], None]  # entries deleted so far
_CRASH_AT = os.environ.get("XSBACKUP_CRASH_AT", "")
POLICY_KEYS = tuple(f.name for f in dataclasses.fields(RetentionSettings))


def _crash(point: str) -> None:
    if point == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def policy_for(settings: Settings, client: Client) -> retention.Policy:
    """The configured policy, overridden key by key by the client's registry record."""
    merged: dict[str, Any] = dataclasses.asdict(settings.retention)
    merged.update({k: v for k, v in client.policy.items() if k in POLICY_KEYS})
    return retention.policy_from_mapping(merged)


def quota_bytes(client: Client) -> int | None:
    value = client.policy.get("quota_bytes")
    return int(value) if isinstance(value, int) and value > 0 else None


@dataclass
class Item:
    client: str
    volume: str
    id: str
    keep: bool
    reasons: tuple[str, ...]
    exclusive: int = 0
    outcome: str = ""       # pruned | skipped: <why> | kept | "" (dry run)


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    freed_estimate: int = 0
    deleted_files: int = 0
    quota: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"items": [vars(i) for i in self.items], "freed_estimate": self.freed_estimate,
                "deleted_files": self.deleted_files, "quota": self.quota}


def plan_client(ctx: Context, client: Client, now: dt.datetime) -> list[Item]:
    store = ctx.store
    policy = policy_for(ctx.settings, client)
    use = usage.cached(store, client.serial)
    items: list[Item] = []
    for volume in store.volumes(client.serial):
        ids = store.snapshot_ids(client.serial, volume)
        decisions = retention.plan([(i, snapshot_time(i)) for i in ids], policy, now)
        for d in decisions:
            items.append(Item(client.serial, volume, d.id, d.keep, tuple(d.reasons),
                              use.exclusive_of(volume, d.id)))
    return items


class ClientLocks:
    """The ingest lock and the post-processing lock of one client, without waiting."""

    def __init__(self, store: Store, client: str) -> None:
        self.ingest = client_lock(store.locks_dir, client)
        self.post = postprocess_lock(store.locks_dir, client)

    def __enter__(self) -> ClientLocks:
        self.ingest.acquire()
        try:
            self.post.acquire()
        except BaseException:
            self.ingest.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.post.release()
        self.ingest.release()


def to_trash(store: Store, client: str, volume: str, sid: str) -> str:
    """Rename one snapshot into trash/ (caller holds the client's locks). Returns why not,
    or "" when done. Refuses the newest snapshot and one being read."""
    ids = store.snapshot_ids(client, volume)
    if not ids or ids[-1] == sid:
        return "newest snapshot"
    path = store.snapshots_dir(client, volume) / sid
    try:
        fd = lock_directory(path, shared=False)
    except LockBusy:
        return "being read"
    except FileNotFoundError:
        return "already gone"
    try:
        name = f"{client}.{volume}.{sid}.{secrets.token_hex(4)}"
        os.rename(path, store.trash_dir / name)
    finally:
        os.close(fd)
    _crash("prune-after-rename")
    return ""


def finish_client(store: Store, client: str) -> None:
    """After renames: ``latest`` still names the newest (never pruned); refresh status."""
    for volume in store.volumes(client):
        fsync_dir(store.snapshots_dir(client, volume))
    count = sum(len(store.snapshot_ids(client, v)) for v in store.volumes(client))
    with contextlib.suppress(OSError):
        set_xattrs(store.client_dir(client), {"snapshot_count": str(count)})
    usage.invalidate(store, client)


def apply(store: Store, items: list[Item]) -> None:
    """Rename every ``keep=False`` item into trash, client by client, under its locks."""
    by_client: dict[str, list[Item]] = {}
    for it in items:
        if it.keep:
            it.outcome = "kept"
        else:
            by_client.setdefault(it.client, []).append(it)
    for client, todo in by_client.items():
        try:
            with ClientLocks(store, client):
                for it in todo:
                    why = to_trash(store, client, it.volume, it.id)
                    it.outcome = f"skipped: {why}" if why else "pruned"
                    if not why:
                        LOG.info("client=%s volume=%s snapshot=%s pruned (%s)", client,
                                 it.volume, it.id, ", ".join(it.reasons))
                finish_client(store, client)
        except LockBusy:
            for it in todo:
                it.outcome = "skipped: transfer in progress"


def delete_trash(store: Store, progress: Progress | None = None) -> int:
    """Delete everything in trash/, outside the client locks; resumable after a kill.
    One deleter at a time (``locks/trash.lock``): a second caller returns at once, the
    first finishes the work. Returns the top-level entries removed (progress counts
    them too)."""
    try:
        with FileLock(store.locks_dir / "trash.lock").acquire():
            return _delete_trash(store, progress)
    except LockBusy:
        return 0


def _delete_trash(store: Store, progress: Progress | None) -> int:
    removed = 0
    for name in sorted(os.listdir(store.trash_dir)):
        path = store.trash_dir / name
        if path.is_dir() and not path.is_symlink():
            # Entry by entry, so a kill leaves a smaller tree in trash/ to finish later.
            with os.scandir(path) as it:
                entries = [e.name for e in it]
            for entry in entries:
                child = path / entry
                if child.is_dir() and not child.is_symlink():
                    # rm -rf: shutil.rmtree measured 1.4x its time (it builds a path
                    # string per file); rm never follows links and stays on this fs.
                    res = procs.run(["rm", "-rf", "--one-file-system", "--", str(child)],
                                    why="delete pruned snapshots")
                    if not res.ok:
                        raise OSError(f"rm -rf {child}: {res.first_error_line()}")
                else:
                    child.unlink()
                removed += 1
                if progress is not None:
                    progress(removed)
                _crash("prune-during-delete")
            path.rmdir()
        else:
            path.unlink()
        removed += 1
        if progress is not None:
            progress(removed)
    return removed


def policy_prune(ctx: Context, now: dt.datetime, client: str | None = None,
                 dry_run: bool = False) -> Report:
    clients = [ctx.registry.get(client)] if client else ctx.registry.all()
    report = Report()
    for c in clients:
        report.items += plan_client(ctx, c, now)
    report.freed_estimate = sum(i.exclusive for i in report.items if not i.keep)
    if not dry_run:
        apply(ctx.store, report.items)
    return report


# ---- the fair-share soft quota ---------------------------------------------------------


def over_quota(ctx: Context) -> tuple[bool, DiskUse]:
    """Whether the state root's filesystem is over the soft quota (df's percentages)."""
    use = disk_use(ctx.store.root)
    limit = ctx.settings.quota.soft_quota_pct
    return (use.blocks_pct > limit or use.inodes_pct > limit), use


def quota_trim(ctx: Context, client: str | None = None, dry_run: bool = False,
               progress: Progress | None = None) -> Report:
    """Trim in rounds until under the soft quota or nothing prunable is left."""
    store = ctx.store
    report = Report()
    everyone = [c.serial for c in ctx.registry.all()]
    over, use = over_quota(ctx)
    report.quota = {"limit_pct": ctx.settings.quota.soft_quota_pct,
                    "blocks_pct": use.blocks_pct, "inodes_pct": use.inodes_pct,
                    "df_blocks_pct": use.df_blocks_pct, "rounds": 0}
    if not over:
        report.quota["result"] = "under quota"
        return report
    share = use.total_bytes * ctx.settings.quota.soft_quota_pct / 100 / max(1, len(everyone))
    report.quota["fair_share_bytes"] = int(share)
    exhausted: set[str] = set()
    while over:
        totals = {c: usage.cached(store, c).total for c in everyone}
        heavy = sorted((c for c in everyone if totals[c] > share and c not in exhausted
                        and (client is None or c == client)),
                       key=lambda c: totals[c], reverse=True)
        if not heavy:
            report.quota["result"] = "nothing prunable left"
            break
        report.quota["rounds"] += 1
        for c in heavy:
            item = _trim_oldest(store, c, totals[c], dry_run)
            if item is None:
                exhausted.add(c)
                continue
            report.items.append(item)
            report.freed_estimate += item.exclusive
        if dry_run:
            report.quota["result"] = "dry run: one round planned"
            break
        report.deleted_files += delete_trash(store, progress)
        over, use = over_quota(ctx)
        report.quota.update({"blocks_pct": use.blocks_pct, "inodes_pct": use.inodes_pct,
                             "df_blocks_pct": use.df_blocks_pct})
    else:
        report.quota["result"] = "under quota"
    return report


def _trim_oldest(store: Store, client: str, total: int, dry_run: bool) -> Item | None:
    """Rename the client's oldest prunable snapshot (never a volume's newest)."""
    use = usage.cached(store, client)
    candidates = sorted(
        (snapshot_time(sid), vol, sid) for vol in store.volumes(client)
         for sid in store.snapshot_ids(client, vol)[:-1])
    if not candidates:
        return None
    if dry_run:
        _, vol, sid = candidates[0]
        return Item(client, vol, sid, False, (f"over fair share ({total} bytes)",),
                    use.exclusive_of(vol, sid), "")
    try:
        with ClientLocks(store, client):
            for _, vol, sid in candidates:
                why = to_trash(store, client, vol, sid)
                if not why:
                    finish_client(store, client)
                    LOG.info("client=%s volume=%s snapshot=%s pruned: over its fair share "
                             "(%d bytes)", client, vol, sid, total)
                    return Item(client, vol, sid, False, (f"over fair share ({total} bytes)",),
                                use.exclusive_of(vol, sid), "pruned")
    except LockBusy:
        return None
    return None
