"""When replication and ``restic prune`` run: serve's scheduler job, and ``offsite run``.

``OffsiteJob`` is called by serve's scheduler every few seconds; it returns at once. When
a pass is due (``offsite.interval_minutes`` since the last one, inside the window, not in
back-off after a repository-wide failure) it starts one in its own thread, so a long
upload never holds the scheduler's other jobs, and ingest, which takes none of the
off-site locks, never waits for it. Once a day at ``offsite.prune_schedule`` (server
local time) the same thread runs ``restic prune`` after the pass.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from xsbackup import units
from xsbackup.context import Context
from xsbackup.errors import LockBusy, XsbackupError
from xsbackup.logs import LOG
from xsbackup.offsite import replicate, state
from xsbackup.offsite.restic import Restic


def prune_repository(ctx: Context, now: dt.datetime | None = None) -> str:
    """``restic prune`` under the off-site lock; its last output line."""
    restic = Restic(ctx.settings.offsite, ctx.store)
    with state.acquire(ctx.store):
        out = restic.prune()
        repo = state.load_repo(ctx.store)
        repo.last_prune = state.now_iso(now or dt.datetime.now(dt.UTC))
        state.save_repo(ctx.store, repo)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return lines[-1] if lines else "prune done"


def prune_due(ctx: Context, now: dt.datetime) -> bool:
    """Whether today's ``offsite.prune_schedule`` time has passed and no prune ran since."""
    when = ctx.settings.offsite.prune_schedule
    if not when:
        return False
    local = now.astimezone()
    hour, minute = units.parse_clock(when)
    at = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if local < at:
        return False
    last = state.load_repo(ctx.store).last_prune
    try:
        return dt.datetime.fromisoformat(last) < at
    except ValueError:
        return True


class OffsiteJob:
    """Serve's scheduler job (see the module)."""

    def __init__(self, get_ctx: Callable[[], Context]) -> None:
        self.get_ctx = get_ctx
        self.last = 0.0
        self.thread: threading.Thread | None = None

    def due(self, ctx: Context, now: dt.datetime) -> bool:
        s = ctx.settings.offsite
        if not s.repository or (self.thread is not None and self.thread.is_alive()):
            return False
        if time.monotonic() - self.last < s.interval_minutes * 60 and self.last:
            return False
        if state.load_repo(ctx.store).retry_at > now.timestamp():
            return False
        return replicate.in_window(ctx, now)

    def __call__(self) -> None:
        ctx = self.get_ctx()
        if self.due(ctx, dt.datetime.now(dt.UTC)):
            self.last = time.monotonic()
            self.thread = threading.Thread(target=self.work, args=(ctx,), name="offsite",
                                           daemon=True)
            self.thread.start()

    def work(self, ctx: Context) -> None:
        try:
            report = replicate.run_once(ctx, honour_backoff=True)
            if report.replicated or report.forgotten or report.failed:
                LOG.info("off-site pass: %d replicated, %d failed, %d forgotten, %d pending",
                         len(report.replicated), len(report.failed), len(report.forgotten),
                         report.pending)
            if prune_due(ctx, dt.datetime.now(dt.UTC)):
                LOG.info("off-site prune: %s", prune_repository(ctx))
        except LockBusy:
            return
        except XsbackupError as e:
            LOG.error("off-site pass failed: %s", e.message)


def loop(get_ctx: Callable[[], Context], stop: threading.Event, tick: float = 5.0) -> None:
    """``offsite run`` without ``--once``: the job, in this thread, until ``stop``."""
    job = OffsiteJob(get_ctx)
    while not stop.is_set():
        ctx = get_ctx()
        if job.due(ctx, dt.datetime.now(dt.UTC)):
            job.last = time.monotonic()
            job.work(ctx)
        stop.wait(tick)
