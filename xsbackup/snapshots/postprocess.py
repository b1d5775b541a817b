"""The post-processor: queue entries become snapshots (DESIGN.md section 4).

For each entry ``queue/<id>.<client>.<volume>.json``, under the client's post-processing
lock:

1. validate the metadata files as Canonical JSON and write the report to ``reports/``;
2. compute stats against the previous snapshot;
3. write the facts as xattrs on ``incoming/<id>``, fsync, ``rename`` to ``snapshots/<id>``;
4. swap ``latest``; mark the entry promoted; update the client's status xattrs;
5. run the ``post-snapshot`` hooks, then delete the entry.

Every step is idempotent, so a process killed anywhere is finished by the next run: an
entry whose snapshot is already visible only gets steps 4-5 again (hooks are therefore
at-least-once). A sweep also re-queues ``incoming/<id>`` trees whose entry was lost when
ingest was killed between its rename and its queue write.

The post-processor takes its own per-client lock rather than the ingest lock: the ingest
lock is held for a whole transfer, and a backup must never be refused because the
previous one is still being validated. The two never touch the same paths: ingest
writes ``current/`` and pins its ``--link-dest`` base by descriptor, so the rename of
``incoming/<id>`` cannot disturb a running transfer.

``XSBACKUP_CRASH_AT=<point>`` kills the process with SIGKILL at a named point; the crash
tests use it to prove the recovery above. It is read once per process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import os
import re
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from xsbackup import counters, hooks
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import InvalidName
from xsbackup.locking import postprocess_lock
from xsbackup.logs import LOG
from xsbackup.snapshots.snapshot import compute_stats, promote, update_latest, write_facts
from xsbackup.store import (
    Store,
    atomic_write,
    check_client,
    check_snapshot_id,
    check_volume,
    iter_clients,
    set_xattrs,
    snapshot_sort_key,
)

CRASH_POINTS = ("start", "after-cjson", "after-xattrs", "after-rename",
                "after-latest", "after-mark", "after-hooks", "after-dequeue")
_CRASH_AT = os.environ.get("XSBACKUP_CRASH_AT", "")


def _crash(point: str) -> None:
    if point == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Entry:
    path: Path
    client: str
    volume: str
    id: str
    data: dict[str, Any]


def read_entry(path: Path) -> Entry | None:
    parts = path.name.split(".")
    if len(parts) < 4 or parts[-1] != "json" or path.name.startswith("."):
        return None
    try:
        sid, client = check_snapshot_id(parts[0]), check_client(parts[1])
        volume = check_volume(".".join(parts[2:-1]))
        data = orjson.loads(path.read_bytes())
    except (InvalidName, orjson.JSONDecodeError, OSError):
        return None
    if not isinstance(data, dict):
        data = {}
    return Entry(path, client, volume, sid, data)


def pending(store: Store) -> list[Entry]:
    try:
        names = os.listdir(store.queue_dir)
    except FileNotFoundError:
        return []
    entries = [e for n in names if (e := read_entry(store.queue_dir / n)) is not None]
    return sorted(entries, key=lambda e: (snapshot_sort_key(e.id), e.client, e.volume))


def _pattern_re(patterns: Iterable[str]) -> re.Pattern[str] | None:
    pats = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(pats)) if pats else None


def validate_metadata(tree: Path, paths: Iterable[str],
                      settings: Settings) -> tuple[dict[str, Any], list[Any]]:
    """Check ``paths`` (relative to ``tree``) as Canonical JSON."""
    from xsbackup.snapshots import cjson

    findings = []
    counts = {"checked": 0, "canonical": 0, "noncanonical": 0, "invalid": 0, "skipped": 0}
    for rel in sorted(paths):
        result = cjson.check_file(tree / rel, settings.postprocess.cjson_max_bytes)
        result["path"] = rel
        status = str(result.get("status"))
        counts["checked"] += 1
        if status in counts:
            counts[status] += 1
        else:
            counts["skipped"] += 1
        if status != "canonical":
            findings.append(result)
    summary = {**counts, "status": "flagged" if findings else "ok"}
    return summary, findings


def previous_snapshot(store: Store, client: str, volume: str, sid: str) -> Path | None:
    older = [i for i in store.snapshot_ids(client, volume)
             if snapshot_sort_key(i) < snapshot_sort_key(sid)]
    return store.snapshots_dir(client, volume) / older[-1] if older else None


def process(ctx: Context, entry: Entry,
            now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> str:
    """Promote one entry. Returns what happened: promoted, recovered or dropped."""
    store, settings = ctx.store, ctx.settings
    client, volume, sid = entry.client, entry.volume, entry.id
    who = f"client={client} volume={volume} snapshot={sid}"
    with postprocess_lock(store.locks_dir, client).acquire(wait=True):
        if not entry.path.exists():
            return "done-elsewhere"
        _crash("start")
        vol = store.volume_dir(client, volume)
        incoming, visible = vol / "incoming" / sid, vol / "snapshots" / sid
        outcome = "recovered"
        if incoming.is_dir() and not visible.exists():
            # One walk gives both the stats and the metadata files to validate.
            metadata: list[str] = []
            stats = compute_stats(incoming, previous_snapshot(store, client, volume, sid),
                                  _pattern_re(settings.postprocess.cjson_patterns),
                                  metadata)
            summary, findings = validate_metadata(incoming, metadata, settings)
            reports = store.reports_dir(client) / volume
            reports.mkdir(parents=True, exist_ok=True)
            atomic_write(reports / f"{sid}.cjson.json", orjson.dumps(
                {"client": client, "volume": volume, "snapshot": sid, "summary": summary,
                 "findings": findings}, option=orjson.OPT_INDENT_2))
            if findings:
                LOG.warning("%s metadata flagged: %d of %d files not canonical JSON",
                            who, len(findings), summary["checked"])
            _crash("after-cjson")
            write_facts(incoming, {
                "created": now().isoformat(timespec="seconds"),
                "files": stats.files, "bytes": stats.bytes, "new_bytes": stats.new_bytes,
                "linked_files": stats.linked_files, "stats": stats.as_dict(),
                "cjson": summary, "origin": entry.data,
            })
            _crash("after-xattrs")
            counters.add(store, {"promotions": 1, "bytes_received": stats.new_bytes,
                                 "files_received": stats.new_files})
            outcome = "promoted"
        elif not visible.exists():
            LOG.error("%s queue entry names no transfer; dropping it", who)
            entry.path.unlink(missing_ok=True)
            return "dropped"
        promote(store, client, volume, sid)
        _crash("after-rename")
        update_latest(store, client, volume)
        _crash("after-latest")
        if not entry.data.get("promoted"):
            atomic_write(entry.path, orjson.dumps({**entry.data, "promoted": True}))
        _crash("after-mark")
        update_client_status(store, client, now())
        stats_json = orjson.dumps(_facts_stats(visible)).decode()
        hooks.run_post("post-snapshot", settings, {
            "XSBACKUP_CLIENT": client, "XSBACKUP_VOLUME": volume, "XSBACKUP_SNAPSHOT_ID": sid,
            "XSBACKUP_SNAPSHOT_PATH": str(visible), "XSBACKUP_STATS": stats_json})
        _crash("after-hooks")
        entry.path.unlink(missing_ok=True)
        _crash("after-dequeue")
        LOG.info("%s %s", who, "snapshot created" if outcome == "promoted" else
                 "snapshot recovered after an interrupted run")
        return outcome


def _facts_stats(path: Path) -> Any:
    from xsbackup.snapshots.snapshot import read_facts

    return read_facts(path).get("stats", {})


def update_client_status(store: Store, client: str, now: dt.datetime) -> None:
    count = sum(len(store.snapshot_ids(client, v)) for v in store.volumes(client))
    with contextlib.suppress(OSError):
        set_xattrs(store.client_dir(client), {
            "last_success": now.isoformat(timespec="seconds"),
            "snapshot_count": str(count),
        })


def requeue_orphans(store: Store) -> int:
    """Queue ``incoming/<id>`` trees that have no entry (ingest killed mid-mark)."""
    queued = {(e.client, e.volume, e.id) for e in pending(store)}
    n = 0
    for client in iter_clients(store):
        for volume in store.volumes(client):
            for sid in store.incoming_ids(client, volume):
                if (client, volume, sid) not in queued:
                    atomic_write(store.queue_dir / f"{sid}.{client}.{volume}.json",
                                 orjson.dumps({"id": sid, "client": client, "volume": volume,
                                               "recovered": True}))
                    n += 1
    return n


def run_once(ctx: Context) -> dict[str, int]:
    """Drain the queue: clients in parallel (bounded pool), each client's entries in order."""
    store = ctx.store
    requeue_orphans(store)
    by_client: dict[str, list[Entry]] = defaultdict(list)
    for e in pending(store):
        by_client[e.client].append(e)
    counts: dict[str, int] = defaultdict(int)
    lock = threading.Lock()

    def work(entries: list[Entry]) -> None:
        for e in entries:
            try:
                outcome = process(ctx, e)
            except Exception as exc:  # one client's failure must not stop the others
                LOG.exception("client=%s volume=%s snapshot=%s post-processing failed",
                              e.client, e.volume, e.id)
                with contextlib.suppress(OSError):
                    set_xattrs(store.client_dir(e.client), {
                        "last_error": f"post-processing {e.volume}/{e.id}: {exc}"})
                with lock:
                    counts["failed"] += 1
                break  # keep this client's order: its later entries wait for the next run
            with lock:
                counts[outcome] += 1

    groups = list(by_client.values())
    if groups:
        workers = min(ctx.settings.postprocess.workers, len(groups))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, groups))
    return dict(counts)


def watch(get_ctx: Callable[[], Context], stop: threading.Event, poll: float = 0.5) -> None:
    """Run until ``stop`` is set: wake within ``poll`` seconds of a queue change (one
    ``stat`` of the queue directory), and sweep every ``postprocess.sweep_seconds``.
    ``get_ctx`` is called on every round, so a configuration reload reaches this loop."""
    last_mtime = -1
    last_sweep = 0.0
    while not stop.is_set():
        ctx = get_ctx()
        sweep = ctx.settings.postprocess.sweep_seconds
        try:
            mtime = os.stat(ctx.store.queue_dir).st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        due = time.monotonic() - last_sweep >= sweep
        if mtime != last_mtime or due:
            last_mtime = mtime
            last_sweep = time.monotonic()
            run_once(ctx)
        stop.wait(poll)
