"""Replication: every promoted snapshot backed up into the restic repository, fairly.

**Which snapshot next.** The queue is every visible snapshot of a replicated volume
(``offsite.volumes``, empty: all) that its client's record does not name (``state``).
The next one is the oldest pending snapshot of the client replicated least recently
(its ``last_replicated`` score; never replicated counts as 0; ties by serial), so a
client with a long backlog gets one snapshot in turn with the others and cannot starve
them. A client in back-off (``retry_at``) waits, except in an explicit
``xsbackup offsite run --once``.

**One backup.** The snapshot directory is held with a shared flock (prune skips it
meanwhile) and ``<root>/offsite/stage/<SN>/<volume>``, a symlink swapped atomically, is
pointed at it. restic runs in that directory with ``PWD`` set to the link, backing up
``.``: every snapshot of a volume is recorded under the same path and tree, so restic's
parent detection and deduplication work across snapshots (measured: an unchanged
snapshot adds no data). ``--parent`` names the restic snapshot of the volume's previous
replicated snapshot when known. ``--ignore-ctime``: the hardlink backend links an
unchanged file into each new snapshot, which changes its ctime but not its content (a
changed file is always a new inode). ``--host SN``, the tags ``volume:V`` and
``snapshot:ID`` and ``--time`` (the snapshot's server time, UTC) name it. restic does
not record the top directory's own attributes when backing up ``.``, so they go in a
``root:<mode>:<mtime_ns>:<hex of the fake-super record>`` tag. Extended attributes
(``user.rsync.%stat``: the client's modes, owners and symlinks) are restic's own.

**Marked after success only.** The client's record names a snapshot only after restic
exited 0. ``offsite/inflight`` names the snapshot being backed up until then, so after a
pass killed between restic's success and the record the next pass lists the repository
and adopts that restic snapshot instead of making a second one; an incomplete restic
snapshot (exit 3: a file could not be read) is forgotten and counted as
a failure. A failure of one snapshot puts its client in back-off (``offsite.retry_seconds``,
doubled per consecutive failure) and the run goes on with the others; a failure of the
repository (unreachable, refused credentials, restic missing) ends the run and puts the
whole replication in back-off. Either is counted in ``offsite_failures`` (``/metrics``:
``xsbackup_offsite_failures_total{reason}``) and runs the ``offsite-failed`` hook.

**Retention mirrored** by reconciliation at the end of each run (``mirror``): a restic
snapshot tagged ``snapshot:ID`` that a client's record names and whose local snapshot is
gone (prune deleted it) is forgotten, unless the off-site policy (``offsite.keep_*``, borg
semantics, the same ``retention.policy``) keeps it. Prune itself never knows about the repository.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from xsbackup import counters, hooks, units
from xsbackup.context import Context
from xsbackup.crashpoints import crash
from xsbackup.errors import LockBusy, OffsiteFailed, XsbackupError
from xsbackup.locking import lock_directory
from xsbackup.logs import LOG
from xsbackup.offsite import registry_copy, state
from xsbackup.offsite.restic import Restic, Snapshot
from xsbackup.restore.access import FAKE_SUPER
from xsbackup.restore.resolve import exists, snapshot_ids
from xsbackup.retention import policy as retention
from xsbackup.store import (
    Store,
    atomic_symlink,
    iter_clients,
    snapshot_sort_key,
    snapshot_time,
)

Progress = Callable[[str], None]
# restic's words for a --parent it cannot use.
_NO_PARENT = ("no matching id", "multiple ids")


@dataclass
class Report:
    replicated: list[str] = field(default_factory=list)   # "SN volume/id"
    adopted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)       # "SN volume/id: why"
    forgotten: list[str] = field(default_factory=list)
    pending: int = 0
    registry_copied: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pending(store: Store, wanted: list[str], rec: state.ClientRecord) -> list[tuple[str, str]]:
    """The client's (volume, id) not yet off-site, oldest first; ``wanted``: the
    replicated volumes (``offsite.volumes``; empty: all)."""
    out = [(v, sid) for v in store.volumes(rec.client) if not wanted or v in wanted
           for sid in snapshot_ids(store, rec.client, v) if not rec.has(v, sid)]
    return sorted(out, key=lambda p: (snapshot_sort_key(p[1]), p[0]))


def pending_of(ctx: Context, rec: state.ClientRecord) -> list[tuple[str, str]]:
    return pending(ctx.store, ctx.settings.offsite.volumes, rec)


def in_window(ctx: Context, now: dt.datetime) -> bool:
    """Whether ``now`` (local time) is inside ``offsite.window_start``..``window_end``."""
    s = ctx.settings.offsite
    if not s.window_start:
        return True
    local = now.astimezone()
    minute = local.hour * 60 + local.minute
    h1, m1 = units.parse_clock(s.window_start)
    h2, m2 = units.parse_clock(s.window_end)
    start, end = h1 * 60 + m1, h2 * 60 + m2
    return start <= minute < end if start <= end else (minute >= start or minute < end)


def root_tag(fd: int) -> str:
    """``root:<mode>:<mtime_ns>:<hex of user.rsync.%stat, or ->`` of the open directory."""
    st = os.fstat(fd)
    try:
        raw = os.getxattr(fd, FAKE_SUPER).hex()
    except OSError:
        raw = "-"
    return f"root:{st.st_mode & 0o7777:o}:{st.st_mtime_ns}:{raw}"


def _summary(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if '"summary"' in line:
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
    return {}


def backup_snapshot(ctx: Context, restic: Restic, client: str, volume: str, sid: str,
                    parent: str | None) -> str:
    """Back one snapshot up; its restic id. ``OffsiteFailed`` when it cannot be."""
    path = ctx.store.snapshots_dir(client, volume) / sid
    try:
        fd = lock_directory(path, shared=True)
    except LockBusy:
        raise OffsiteFailed(f"snapshot {volume}/{sid} of {client} is being pruned") from None
    except FileNotFoundError:
        raise OffsiteFailed(f"snapshot {volume}/{sid} of {client} is gone") from None
    try:
        stage = restic.home / "stage" / client / volume
        stage.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        atomic_symlink(str(path), stage)
        args = ["backup", "--json", "--host", client, "--tag", f"volume:{volume}",
                "--tag", f"snapshot:{sid}", "--tag", root_tag(fd), "--time",
                snapshot_time(sid).strftime("%Y-%m-%d %H:%M:%S"), "--ignore-ctime"]
        why = f"replicate {client} {volume}/{sid}"
        try:
            result = restic.run([*args, *(["--parent", parent] if parent else []), "."],
                                why=why, cwd=str(stage), pwd=str(stage), ok=(0, 3))
        except OffsiteFailed as e:
            # The parent was forgotten by hand, or its short id became ambiguous: restic
            # then finds the parent itself, by the (same) path.
            if not parent or not any(k in e.message.lower() for k in _NO_PARENT):
                raise
            LOG.warning("client=%s volume=%s snapshot=%s parent %s unusable (%s); letting "
                        "restic choose", client, volume, sid, parent, e.message)
            result = restic.run([*args, "."], why=why, cwd=str(stage), pwd=str(stage),
                                ok=(0, 3))
    finally:
        os.close(fd)
    summary = _summary(result.stdout)
    rid = str(summary.get("snapshot_id", ""))
    if result.returncode == 3:
        if rid:
            restic.forget([rid])
        raise OffsiteFailed(f"snapshot {volume}/{sid} of {client}: restic could not read "
                            f"every file ({result.first_error_line()})")
    if not rid:
        raise OffsiteFailed(f"snapshot {volume}/{sid} of {client}: restic reported no "
                            "snapshot id")
    return rid


def _index(listing: list[Snapshot]) -> dict[tuple[str, str, str], Snapshot]:
    """(host, volume, id) -> the newest restic snapshot of it."""
    out: dict[tuple[str, str, str], Snapshot] = {}
    for snap in listing:
        vol, sid = snap.tag("volume"), snap.tag("snapshot")
        if vol and sid:
            out[(snap.host, vol, sid)] = snap
    return out


def _parent(rec: state.ClientRecord, volume: str, sid: str) -> str | None:
    older = [(k.split("/", 1)[1], rid) for k, rid in rec.replicated.items()
             if k.split("/", 1)[0] == volume
             and snapshot_sort_key(k.split("/", 1)[1]) < snapshot_sort_key(sid)]
    return max(older, key=lambda p: snapshot_sort_key(p[0]))[1] if older else None


def _fail(ctx: Context, what: str, err: XsbackupError, now: dt.datetime,
          rec: state.ClientRecord | None) -> None:
    """Record and announce one failure (a client's, or with ``rec`` None the run's)."""
    base = ctx.settings.offsite.retry_seconds
    target: state.ClientRecord | state.RepoRecord = rec or state.load_repo(ctx.store)
    target.failures += 1
    target.last_error, target.last_error_at = err.message, state.now_iso(now)
    target.retry_at = now.timestamp() + state.backoff_seconds(base, target.failures)
    if isinstance(target, state.ClientRecord):
        state.save_client(ctx.store, target)
    else:
        state.save_repo(ctx.store, target)
    counters.bump(ctx.store, "offsite_failures", {"reason": err.reason})
    LOG.error("off-site %s failed (%d in a row): %s", what, target.failures, err.message)
    if target.failures == ctx.settings.offsite.notify_after:
        hooks.run_post("offsite-failed", ctx.settings, {
            "XSBACKUP_CLIENT": rec.client if rec else "", "XSBACKUP_ERROR": err.message,
            "XSBACKUP_FAILURES": str(target.failures)})


def run_once(ctx: Context, *, now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
             honour_backoff: bool = False, limit: int | None = None,
             progress: Progress | None = None) -> Report:
    """One replication pass under ``locks/offsite.lock`` (``LockBusy`` if another runs):
    replicate pending snapshots fairly (at most ``limit``), mirror retention, copy the
    registry when it changed. The repository is listed only when something needs it (a
    pass interrupted mid-backup, a snapshot gone locally, a changed registry), so a pass
    costs one restic call per snapshot. Repository-wide errors are recorded and raised."""
    restic = Restic(ctx.settings.offsite, ctx.store)
    report = Report()
    cache: list[list[Snapshot]] = []

    def listing() -> list[Snapshot]:
        if not cache:
            cache.append(restic.snapshots())
        return cache[0]

    with state.acquire(ctx.store):
        records = {c: state.load_client(ctx.store, c) for c in iter_clients(ctx.store)}
        try:
            restic.environment()  # the password and credentials files, checked every pass
            if state.inflight(ctx.store):
                _adopt(ctx, records, _index(listing()), report, now())
                state.clear_inflight(ctx.store)
            _replicate(ctx, restic, records, report, now, honour_backoff, limit, progress)
            report.pending = sum(len(pending_of(ctx, r)) for r in records.values())
            report.forgotten = mirror(ctx, restic, listing, now())
            report.registry_copied = registry_copy.replicate(ctx, restic)
        except XsbackupError as e:
            _fail(ctx, "run", e, now(), None)
            raise
        repo = state.load_repo(ctx.store)
        repo.failures, repo.retry_at, repo.last_run = 0, 0.0, state.now_iso(now())
        repo.volumes = list(ctx.settings.offsite.volumes)
        state.save_repo(ctx.store, repo)
    return report


def _adopt(ctx: Context, records: dict[str, state.ClientRecord],
           index: dict[tuple[str, str, str], Snapshot], report: Report,
           now: dt.datetime) -> None:
    """Mark what restic finished before a run was killed, ahead of its record."""
    for rec in records.values():
        found = [(v, sid, index[(rec.client, v, sid)]) for v, sid in pending_of(ctx, rec)
                 if (rec.client, v, sid) in index]
        for v, sid, snap in found:
            rec.replicated[rec.key(v, sid)] = snap.id
            report.adopted.append(f"{rec.client} {v}/{sid}")
            LOG.info("client=%s volume=%s snapshot=%s already off-site as %s", rec.client,
                     v, sid, snap.short_id)
        if found:
            rec.last_success = state.now_iso(now)
            state.save_client(ctx.store, rec)


def _next(records: dict[str, state.ClientRecord], todo: dict[str, list[tuple[str, str]]],
          at: float, honour_backoff: bool) -> tuple[state.ClientRecord, str, str] | None:
    """The oldest pending snapshot of the least recently replicated ready client."""
    ready = [r for r in records.values() if todo.get(r.client)
             and not (honour_backoff and r.retry_at > at)]
    if not ready:
        return None
    rec = min(ready, key=lambda r: (r.last_replicated, r.client))
    volume, sid = todo[rec.client].pop(0)
    return rec, volume, sid


def _replicate(ctx: Context, restic: Restic, records: dict[str, state.ClientRecord],
               report: Report, now: Callable[[], dt.datetime], honour_backoff: bool,
               limit: int | None, progress: Progress | None) -> None:
    # What is pending, listed once; what is promoted meanwhile waits for the next pass.
    todo = {c: pending_of(ctx, r) for c, r in records.items()}
    while limit is None or len(report.replicated) < limit:
        picked = _next(records, todo, now().timestamp(), honour_backoff)
        if picked is None:
            return
        rec, volume, sid = picked
        if not exists(ctx.store, rec.client, volume, sid):
            continue  # pruned since the pass began: nothing to copy
        what = f"{rec.client} {volume}/{sid}"
        if progress is not None:
            progress(what)
        started = time.monotonic()
        # Kept until the record names the snapshot: a pass killed in between lists the
        # repository next time and adopts what restic finished.
        state.set_inflight(ctx.store, what)
        try:
            rid = backup_snapshot(ctx, restic, rec.client, volume, sid,
                                  _parent(rec, volume, sid))
        except OffsiteFailed as e:
            todo[rec.client] = []  # a client that failed waits for the next pass
            report.failed.append(f"{what}: {e.message}")
            _fail(ctx, f"replication of {what}", e, now(), rec)
            continue
        crash("offsite-after-backup")
        stamp = now()
        rec.replicated[rec.key(volume, sid)] = rid
        rec.last_replicated = max(stamp.timestamp(), rec.last_replicated + 1e-6)
        rec.last_success, rec.failures, rec.retry_at = state.now_iso(stamp), 0, 0.0
        rec.last_error = rec.last_error_at = ""
        state.save_client(ctx.store, rec)
        state.clear_inflight(ctx.store)
        report.replicated.append(what)
        counters.bump(ctx.store, "offsite_replications")
        LOG.info("client=%s volume=%s snapshot=%s replicated off-site as %s in %.1fs",
                 rec.client, volume, sid, rid, time.monotonic() - started)


def offsite_policy(ctx: Context) -> retention.Policy:
    """The off-site policy (``offsite.keep_*``); every rule off by default."""
    keys = {f.name: getattr(ctx.settings.offsite, f.name)
            for f in dataclasses.fields(ctx.settings.offsite)
            if f.name in retention.POLICY_KEYS}
    return retention.policy_from_mapping(keys)


def mirror(ctx: Context, restic: Restic, listing: Callable[[], list[Snapshot]],
           now: dt.datetime) -> list[str]:
    """Forget what prune deleted: a restic snapshot this state root replicated (its
    client's record names it) whose local snapshot is gone, unless the off-site policy
    keeps it; and duplicates of one snapshot (a run killed after restic saved one).
    Nothing a record does not name is ever forgotten, so a new, empty state root (before
    ``offsite rebuild``) cannot empty the repository. Returns "SN volume/id" of each."""
    records = [state.load_client(ctx.store, c) for c in state.known_clients(ctx.store)]
    local = {(rec.client, vol): set(snapshot_ids(ctx.store, rec.client, vol))
             for rec in records for vol in {k.split("/", 1)[0] for k in rec.replicated}}
    if not any(sid not in local[(rec.client, vol)] for rec in records
               for vol, sid in (k.split("/", 1) for k in rec.replicated)):
        return []  # nothing replicated is gone: no need to list the repository
    policy = offsite_policy(ctx)
    groups: dict[tuple[str, str], dict[str, Snapshot]] = {}
    doomed: list[Snapshot] = []
    for snap in listing():  # oldest first: the newest restic snapshot of an id wins
        vol, sid = snap.tag("volume"), snap.tag("snapshot")
        if vol and sid and snap.host:
            group = groups.setdefault((snap.host, vol), {})
            if sid in group:
                doomed.append(group[sid])
            group[sid] = snap
    updates: list[tuple[state.ClientRecord, list[str]]] = []
    for rec in records:
        client = rec.client
        gone: list[str] = []
        for vol in sorted({k.split("/", 1)[0] for k in rec.replicated}):
            here = local[(client, vol)]
            group = groups.get((client, vol), {})
            plan = retention.plan([(sid, snapshot_time(sid)) for sid in group], policy, now)
            # The plan's safety keep of the newest is for local snapshots, not for these.
            keep = {d.id for d in plan if d.keep and not policy.keeps_nothing
                    and set(d.reasons) - {retention.NEWEST}}
            for key in [k for k in rec.replicated if k.split("/", 1)[0] == vol]:
                sid = key.split("/", 1)[1]
                if sid not in here and sid not in keep:
                    gone.append(key)
                    if sid in group:
                        doomed.append(group[sid])
        if gone:
            updates.append((rec, gone))
    if doomed:
        restic.forget([s.id for s in doomed])
    for rec, gone in updates:
        for key in gone:
            del rec.replicated[key]
        state.save_client(ctx.store, rec)
    for s in doomed:
        LOG.info("client=%s volume=%s snapshot=%s forgotten off-site (%s)", s.host,
                 s.tag("volume"), s.tag("snapshot"), s.short_id)
    return [f"{s.host} {s.tag('volume')}/{s.tag('snapshot')}" for s in doomed]


def client_status(store: Store, wanted: list[str], now: dt.datetime) -> list[dict[str, Any]]:
    """Per client: snapshots off-site and pending, the replication lag (seconds since the
    oldest local snapshot not yet off-site was taken; 0 when none waits), the last
    success and the last error. Reads records and directory listings only."""
    rows: list[dict[str, Any]] = []
    for client in iter_clients(store):
        rec = state.load_client(store, client)
        todo = pending(store, wanted, rec)
        lag = max(0.0, (now - snapshot_time(todo[0][1])).total_seconds()) if todo else 0.0
        rows.append({"client": client, "replicated": len(rec.replicated),
                     "pending": len(todo), "lag_seconds": lag,
                     "last_success": rec.last_success, "last_error": rec.last_error,
                     "last_error_at": rec.last_error_at, "failures": rec.failures})
    return rows


def status(ctx: Context, now: dt.datetime) -> dict[str, Any]:
    """``offsite status --json`` and the ``offsite`` part of ``status --json``."""
    return {"repository": ctx.settings.offsite.repository and
            Restic(ctx.settings.offsite, ctx.store).location,
            "state": state.load_repo(ctx.store).as_dict(),
            "clients": client_status(ctx.store, ctx.settings.offsite.volumes, now)}
