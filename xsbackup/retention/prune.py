"""Prune: carry out retention plans and the fair-share soft quota (DESIGN.md section 6).

The math is in ``retention`` (pure); this module only applies it, safely:

* a client's newest snapshot is never deleted, whatever the policy says;
* a client with a transfer running (its ingest lock is held) is skipped this time, so
  the ``--link-dest`` base of a running transfer is never touched;
* a snapshot being read (a restore holds a shared flock on it) cannot be locked
  exclusively and is skipped, and the report says so;
* deletion is lazy and crash-safe: under the client's locks the storage backend only
  takes the snapshot out of sight (``Backend.delete``: for the hardlink backend one
  fast ``rename`` into ``trash/``); the space is reclaimed afterwards, outside any lock
  (``Backend.purge``), and whatever a killed run left is finished by the next run (or
  by ``serve``'s scheduler).

The soft quota, as the original server meant it: above ``quota.soft_quota_pct`` of the
state root's blocks or inodes, trim in rounds; each round every client whose usage (its
hardlink-aware total, its transfers that are not snapshots yet included) is over its
fair share (the quota divided by the number of clients) loses its oldest prunable
snapshot, heaviest client first. It stops when the filesystem is under the quota or when
nothing prunable is left, and reports which.

What interrupted transfers left for resuming (``Backend.discard_partial``) goes before
any snapshot: every prune discards it once untouched for
``ingest.abandon_partial_hours``, and the soft quota discards all of it (of clients not
transferring) before its first round.

Prune must work on a disk with no free block or inode: it writes nothing before it has
deleted something (``usage.Tally`` holds the figures until then, and a cache write that
still finds no room is skipped), and the locks it takes exist already.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from xsbackup.clients.registry import Client
from xsbackup.config import RetentionSettings, Settings
from xsbackup.context import Context
from xsbackup.errors import LockBusy
from xsbackup.locking import client_lock, postprocess_lock
from xsbackup.logs import LOG
from xsbackup.retention import policy as retention
from xsbackup.snapshots import usage
from xsbackup.storage.base import Progress
from xsbackup.store import DiskUse, Store, disk_use, set_xattrs, snapshot_time

POLICY_KEYS = tuple(f.name for f in dataclasses.fields(RetentionSettings))


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
class Partial:
    """What an interrupted transfer of one volume left for resuming."""

    client: str
    volume: str
    age_seconds: int
    outcome: str = ""       # discarded | skipped: <why> | "" (dry run)
    discarded: list[str] = field(default_factory=list)


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    freed_estimate: int = 0
    deleted_files: int = 0
    quota: dict[str, Any] = field(default_factory=dict)
    partials: list[Partial] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"items": [vars(i) for i in self.items], "freed_estimate": self.freed_estimate,
                "deleted_files": self.deleted_files, "quota": self.quota,
                "partials": [vars(p) for p in self.partials]}


def plan_client(ctx: Context, client: Client, now: dt.datetime,
                tally: usage.Tally | None = None) -> list[Item]:
    store = ctx.store
    policy = policy_for(ctx.settings, client)
    use = (tally or usage.Tally(ctx)).get(client.serial)
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


def delete_snapshot(ctx: Context, client: str, volume: str, sid: str) -> str:
    """Take one snapshot out of sight (caller holds the client's locks); its space is
    reclaimed by ``ctx.storage.purge()``. Returns why not, or "" when done. Refuses the
    newest snapshot (whatever the policy) and, through the backend, one being read."""
    ids = ctx.store.snapshot_ids(client, volume)
    if not ids or ids[-1] == sid:
        return "newest snapshot"
    return ctx.storage.delete(client, volume, sid)


def finish_client(store: Store, client: str) -> None:
    """After deletions: ``latest`` still names the newest (never pruned); refresh the
    client's snapshot count and drop its usage cache."""
    count = sum(len(store.snapshot_ids(client, v)) for v in store.volumes(client))
    with contextlib.suppress(OSError):
        set_xattrs(store.client_dir(client), {"snapshot_count": str(count)})
    usage.invalidate(store, client)


def apply(ctx: Context, items: list[Item]) -> None:
    """Take every ``keep=False`` item out of sight, client by client, under its locks."""
    by_client: dict[str, list[Item]] = {}
    for it in items:
        if it.keep:
            it.outcome = "kept"
        else:
            by_client.setdefault(it.client, []).append(it)
    for client, todo in by_client.items():
        try:
            with ClientLocks(ctx.store, client):
                for it in todo:
                    why = delete_snapshot(ctx, client, it.volume, it.id)
                    it.outcome = f"skipped: {why}" if why else "pruned"
                    if not why:
                        LOG.info("client=%s volume=%s snapshot=%s pruned (%s)", client,
                                 it.volume, it.id, ", ".join(it.reasons))
                finish_client(ctx.store, client)
        except LockBusy:
            for it in todo:
                it.outcome = "skipped: transfer in progress"


def policy_prune(ctx: Context, now: dt.datetime, client: str | None = None,
                 dry_run: bool = False) -> Report:
    clients = [ctx.registry.get(client)] if client else ctx.registry.all()
    report = Report()
    report.partials = discard_partials(ctx, now, [c.serial for c in clients],
                                       pressure=False, dry_run=dry_run)
    tally = usage.Tally(ctx)
    for c in clients:
        report.items += plan_client(ctx, c, now, tally)
    report.freed_estimate = sum(i.exclusive for i in report.items if not i.keep)
    if not dry_run:
        apply(ctx, report.items)
        tally.flush()
    return report


def discard_partials(ctx: Context, now: dt.datetime, clients: list[str], pressure: bool,
                     dry_run: bool = False) -> list[Partial]:
    """Discard what interrupted transfers left for resuming: untouched for
    ``ingest.abandon_partial_hours``, or, under disk ``pressure``, all of it. A client
    transferring (its ingest lock is held) keeps its own."""
    limit = ctx.settings.ingest.abandon_partial_hours * 3600
    out: list[Partial] = []
    for c in clients:
        for volume in ctx.store.volumes(c):
            age = ctx.storage.partial_age(c, volume, now.timestamp())
            if age is None or (not pressure and age < limit):
                continue
            found = Partial(c, volume, int(age))
            out.append(found)
            if dry_run:
                continue
            try:
                with client_lock(ctx.store.locks_dir, c).acquire():
                    age = ctx.storage.partial_age(c, volume, now.timestamp())
                    if age is not None and (pressure or age >= limit):
                        found.discarded = ctx.storage.discard_partial(c, volume)
            except LockBusy:
                found.outcome = "skipped: transfer in progress"
                continue
            found.outcome = "discarded" if found.discarded else "skipped: already gone"
            if found.discarded:
                usage.invalidate(ctx.store, c)
                LOG.info("client=%s volume=%s interrupted transfer discarded (untouched "
                         "for %ds%s)", c, volume, found.age_seconds,
                         ", disk under pressure" if pressure else "")
    return out


# ---- the fair-share soft quota ---------------------------------------------------------


def over_quota(ctx: Context) -> tuple[bool, DiskUse]:
    """Whether the state root's filesystem is over the soft quota (df's percentages)."""
    use = disk_use(ctx.store.root)
    limit = ctx.settings.quota.soft_quota_pct
    return (use.blocks_pct > limit or use.inodes_pct > limit), use


def quota_trim(ctx: Context, client: str | None = None, dry_run: bool = False,
               progress: Progress | None = None,
               now: dt.datetime | None = None) -> Report:
    """Trim in rounds until under the soft quota or nothing prunable is left; what
    interrupted transfers left goes first."""
    report = Report()
    everyone = [c.serial for c in ctx.registry.all()]
    over, use = over_quota(ctx)
    report.quota = {"limit_pct": ctx.settings.quota.soft_quota_pct,
                    "blocks_pct": use.blocks_pct, "inodes_pct": use.inodes_pct,
                    "df_blocks_pct": use.df_blocks_pct, "rounds": 0}
    if not over:
        report.quota["result"] = "under quota"
        return report
    report.partials = discard_partials(ctx, now or dt.datetime.now(dt.UTC),
                                       [client] if client else everyone, pressure=True,
                                       dry_run=dry_run)
    if any(p.discarded for p in report.partials):
        report.deleted_files += ctx.storage.purge(progress)
        over, use = over_quota(ctx)
        _update(report, use)
        if not over:
            report.quota["result"] = "under quota"
            return report
    share = use.total_bytes * ctx.settings.quota.soft_quota_pct / 100 / max(1, len(everyone))
    report.quota["fair_share_bytes"] = int(share)
    exhausted: set[str] = set()
    tally = usage.Tally(ctx)
    while over:
        totals = {c: tally.get(c).total for c in everyone}
        heavy = sorted((c for c in everyone if totals[c] > share and c not in exhausted
                        and (client is None or c == client)),
                       key=lambda c: totals[c], reverse=True)
        if not heavy:
            report.quota["result"] = "nothing prunable left"
            break
        report.quota["rounds"] += 1
        for c in heavy:
            item = _trim_oldest(ctx, c, totals[c], tally, dry_run)
            if item is None:
                exhausted.add(c)
                continue
            report.items.append(item)
            report.freed_estimate += item.exclusive
        if dry_run:
            report.quota["result"] = "dry run: one round planned"
            break
        report.deleted_files += ctx.storage.purge(progress)
        over, use = over_quota(ctx)
        _update(report, use)
    else:
        report.quota["result"] = "under quota"
    if not dry_run:
        tally.flush()
    return report


def _update(report: Report, use: DiskUse) -> None:
    report.quota.update({"blocks_pct": use.blocks_pct, "inodes_pct": use.inodes_pct,
                         "df_blocks_pct": use.df_blocks_pct})


def _trim_oldest(ctx: Context, client: str, total: int, tally: usage.Tally,
                 dry_run: bool) -> Item | None:
    """Delete the client's oldest prunable snapshot (never a volume's newest)."""
    store = ctx.store
    use = tally.get(client)
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
                why = delete_snapshot(ctx, client, vol, sid)
                if not why:
                    finish_client(store, client)
                    LOG.info("client=%s volume=%s snapshot=%s pruned: over its fair share "
                             "(%d bytes)", client, vol, sid, total)
                    return Item(client, vol, sid, False, (f"over fair share ({total} bytes)",),
                                use.exclusive_of(vol, sid), "pruned")
    except LockBusy:
        return None
    return None
