"""The post-processor: queue entries become snapshots (DESIGN.md section 4).

For each entry of the queue (``snapshots.queue``), under the client's post-processing
lock:

1. validate the metadata files as Canonical JSON and write the report to ``reports/``;
2. compute stats against the previous snapshot, and in the same walk take group and
   world write away from the stored modes (the client's stay recorded for restore);
3. have the backend keep the content manifest (``snapshots.manifest``: digests of the
   files new since the previous snapshot, copied for the others), write the facts as
   xattrs on ``incoming/<id>`` and fsync; the storage backend makes it visible as
   ``snapshots/<id>`` and swaps ``latest`` (``Backend.promote``);
4. mark the entry promoted; update the client's status xattrs;
5. run the ``post-snapshot`` hooks, then delete the entry.

Every step is idempotent, so a process killed anywhere is finished by the next run: an
entry whose snapshot is already visible only gets steps 4-5 again (hooks are therefore
at-least-once). A sweep also re-queues ``incoming/<id>`` trees whose entry was lost when
ingest was killed between its rename and its queue write.

The post-processor takes its own per-client lock rather than the ingest lock: the ingest
lock is held for a whole transfer, and a backup must never be refused because the
previous one is still being validated. The two never touch the same paths: ingest
writes ``current/``, and the storage backend pins a base it reads from ``incoming/`` by
descriptor, so promoting ``incoming/<id>`` cannot disturb a running transfer.

``XSBACKUP_CRASH_AT=<point>`` kills the process with SIGKILL at one of ``CRASH_POINTS``
(``crashpoints``); the crash tests use it to prove the recovery above.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from xsbackup import counters, hooks
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.crashpoints import crash
from xsbackup.locking import postprocess_lock
from xsbackup.logs import LOG
from xsbackup.snapshots import manifest, queue
from xsbackup.snapshots.queue import Entry
from xsbackup.snapshots.snapshot import (
    Changes,
    compute_stats,
    read_facts,
    since_ns,
    write_facts,
)
from xsbackup.store import Store, atomic_write, set_xattrs, snapshot_sort_key

# Where ``XSBACKUP_CRASH_AT`` may kill a run (``crashpoints``); "after-rename" is inside
# the backend's promotion, between its rename and the ``latest`` swap.
CRASH_POINTS = ("start", "after-cjson", "after-manifest", "after-xattrs", "after-rename",
                "after-latest", "after-mark", "after-hooks", "after-dequeue")


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
        crash("start")
        incoming = store.incoming_dir(client, volume) / sid
        visible = store.snapshots_dir(client, volume) / sid
        outcome = "recovered"
        if incoming.is_dir() and not visible.exists():
            # One walk gives both the stats and the metadata files to validate.
            metadata: list[str] = []
            prev = previous_snapshot(store, client, volume, sid)
            changes = Changes(since_ns=since_ns(prev))
            stats = compute_stats(incoming, prev,
                                  _pattern_re(settings.postprocess.cjson_patterns),
                                  metadata, tighten=True, changes=changes)
            summary, findings = validate_metadata(incoming, metadata, settings)
            reports = store.reports_dir(client) / volume
            reports.mkdir(parents=True, exist_ok=True)
            atomic_write(reports / f"{sid}.cjson.json", orjson.dumps(
                {"client": client, "volume": volume, "snapshot": sid, "summary": summary,
                 "findings": findings}, option=orjson.OPT_INDENT_2))
            if findings:
                LOG.warning("%s metadata flagged: %d of %d files not canonical JSON",
                            who, len(findings), summary["checked"])
            crash("after-cjson")
            mstats = manifest.keep(ctx.storage, client, volume, sid, incoming, changes,
                                   manifest.previous(ctx.storage, client, volume,
                                                     prev.name if prev is not None else None))
            LOG.info("%s manifest written (%s): %d files, %d hashed (%d bytes), %d records "
                     "reused", who, mstats.how, mstats.files, mstats.hashed_files,
                     mstats.hashed_bytes, mstats.reused)
            crash("after-manifest")
            write_facts(incoming, {
                "created": now().isoformat(timespec="seconds"),
                "files": stats.files, "bytes": stats.bytes, "new_bytes": stats.new_bytes,
                "linked_files": stats.linked_files, "stats": stats.as_dict(),
                "cjson": summary, "origin": entry.data, "manifest": mstats.as_dict(),
            })
            crash("after-xattrs")
            counters.add(store, {"promotions": 1, "bytes_received": stats.new_bytes,
                                 "files_received": stats.new_files})
            outcome = "promoted"
        elif not visible.exists():
            LOG.error("%s queue entry names no transfer; dropping it", who)
            entry.path.unlink(missing_ok=True)
            return "dropped"
        ctx.storage.promote(client, volume, sid)
        crash("after-latest")
        queue.mark_promoted(entry)
        crash("after-mark")
        update_client_status(store, client, now())
        stats_json = orjson.dumps(read_facts(visible).get("stats", {})).decode()
        hooks.run_post("post-snapshot", settings, {
            "XSBACKUP_CLIENT": client, "XSBACKUP_VOLUME": volume, "XSBACKUP_SNAPSHOT_ID": sid,
            "XSBACKUP_SNAPSHOT_PATH": str(visible), "XSBACKUP_STATS": stats_json})
        crash("after-hooks")
        entry.path.unlink(missing_ok=True)
        crash("after-dequeue")
        LOG.info("%s %s", who, "snapshot created" if outcome == "promoted" else
                 "snapshot recovered after an interrupted run")
        return outcome


def update_client_status(store: Store, client: str, now: dt.datetime) -> None:
    count = sum(len(store.snapshot_ids(client, v)) for v in store.volumes(client))
    with contextlib.suppress(OSError):
        set_xattrs(store.client_dir(client), {
            "last_success": now.isoformat(timespec="seconds"),
            "snapshot_count": str(count),
        })


def run_once(ctx: Context) -> dict[str, int]:
    """Drain the queue: clients in parallel (bounded pool), each client's entries in order."""
    store = ctx.store
    queue.requeue_orphans(store)
    by_client: dict[str, list[Entry]] = defaultdict(list)
    for e in queue.pending(store):
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
