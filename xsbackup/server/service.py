"""``xsbackup serve``: the whole product in one process on embedded defaults.

Threads: the embedded SSH server (unless ``server.embedded_ssh`` is false, for OpenSSH
deployments), the HTTP server (waitress), the post-processing worker
(``postprocess.watch``) and a scheduler for periodic jobs. Before any of them starts,
serve checks that ``ingest.rsync`` exists (``RsyncNotFound``) and that it can have its
ports (``ListenError``), each a one-line error. The main thread waits for signals:

* SIGTERM/SIGINT: stop accepting SSH and HTTP connections, stop the post-processor
  after its current entry, give running transfers up to ``server.shutdown_timeout``
  seconds, then terminate what is left (an interrupted transfer is resumed by the
  client's next backup; stored snapshots are never touched) and exit 0;
* SIGHUP: reload the configuration and regenerate ``authorized_keys`` from the registry;
  the scheduled prune checks its (possibly new) schedule at the scheduler's next tick
  rather than at the end of its minute.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xsbackup import config
from xsbackup.clients.registry import write_authorized_keys
from xsbackup.context import Context
from xsbackup.errors import RsyncNotFound, XsbackupError
from xsbackup.ingest import admission
from xsbackup.logs import LOG
from xsbackup.offsite.schedule import OffsiteJob
from xsbackup.snapshots import postprocess
from xsbackup.store import atomic_write, init_root, iter_clients


@dataclass
class Job:
    name: str
    every: float                     # seconds
    run: Callable[[], Any]
    last: float = field(default=0.0)


class Scheduler:
    """Runs periodic jobs in one thread; a failing job is logged and tried next period."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def add(self, name: str, every: float, run: Callable[[], Any]) -> None:
        self.jobs.append(Job(name, every, run))

    def wake(self, name: str) -> None:
        """Run job ``name`` at the next tick instead of at the end of its period."""
        for job in self.jobs:
            if job.name == name:
                job.last = -math.inf

    def loop(self, stop: threading.Event, tick: float = 1.0) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if now - job.last >= job.every:
                    job.last = now
                    try:
                        job.run()
                    except Exception:  # one job's failure must not stop the others
                        LOG.exception("scheduled job %s failed", job.name)
            stop.wait(tick)


def sweep_trash(ctx: Context) -> None:
    """Finish deletions that a killed process left behind (``Backend.purge``)."""
    ctx.storage.purge()


class DailyPrune:
    """The policy prune and the quota check, once a day at ``prune.schedule`` (server
    local time), and only while the 1-minute load is under ``admission.max_load``, as
    the original server did; a busy day's run waits for the load to drop. When it last
    ran is kept in ``<root>/last-prune``, so a restart later that day does not run it
    again."""

    def __init__(self, get_ctx: Callable[[], Context]) -> None:
        self.get_ctx = get_ctx
        self.done_on: dt.date | None = None
        with contextlib.suppress(OSError, ValueError):
            self.done_on = dt.datetime.fromisoformat(self._stamp().read_text().strip()).date()

    def _stamp(self) -> Path:
        return self.get_ctx().store.root / "last-prune"

    def schedule(self) -> str:
        return self.get_ctx().settings.prune.schedule

    def due(self, now: dt.datetime) -> bool:
        when = self.schedule().strip()
        if not when:
            return False
        hh, _, mm = when.partition(":")
        at = now.replace(hour=int(hh), minute=int(mm or 0), second=0, microsecond=0)
        return now >= at and self.done_on != now.date()

    def __call__(self) -> None:
        from xsbackup.retention import prune

        now = dt.datetime.now().astimezone()
        ctx = self.get_ctx()
        if not self.due(now) or os.getloadavg()[0] > ctx.settings.admission.max_load:
            return
        self.done_on = now.date()
        atomic_write(self._stamp(), f"{now.isoformat(timespec='seconds')}\n".encode())
        report = prune.policy_prune(ctx, now.astimezone(dt.UTC))
        ctx.storage.purge()
        quota = prune.quota_trim(ctx)
        pruned = sum(1 for i in report.items if i.outcome == "pruned")
        LOG.info("scheduled prune: %d snapshots pruned by policy; quota: %s", pruned,
                 quota.quota.get("result"))


class DailyCheck(DailyPrune):
    """The nightly sampled integrity check (``integrity.check``) of every client, at
    ``check.schedule`` and by the prune's rules: once a day, while the load is under the
    limit, the day kept in ``<root>/last-check``. Each client's sample of
    ``check.sample_percent`` of its inodes rotates (its position is on the client), so
    every inode is read within 100/percent nights. ``clock`` is for tests."""

    def __init__(self, get_ctx: Callable[[], Context],
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone()
                 ) -> None:
        self.clock = clock
        super().__init__(get_ctx)

    def _stamp(self) -> Path:
        return self.get_ctx().store.root / "last-check"

    def schedule(self) -> str:
        return self.get_ctx().settings.check.schedule

    def __call__(self) -> None:
        from xsbackup.integrity import check

        now = self.clock()
        ctx = self.get_ctx()
        if not self.due(now) or os.getloadavg()[0] > ctx.settings.admission.max_load:
            return
        self.done_on = now.date()
        atomic_write(self._stamp(), f"{now.isoformat(timespec='seconds')}\n".encode())
        damaged = 0
        for client in iter_clients(ctx.store):
            try:
                report = check.run(ctx, client, sample=ctx.settings.check.sample_percent,
                                   now=lambda: now.astimezone(dt.UTC))
            except Exception:  # one client's failure must not stop the others
                LOG.exception("client=%s nightly check failed", client)
                continue
            damaged += len(report.damaged)
        LOG.info("nightly check: %s%% sample of every client, %d damaged files",
                 ctx.settings.check.sample_percent, damaged)


def check_rsync(settings: config.Settings) -> str:
    """The rsync every transfer runs, found now rather than at the first backup."""
    rsync = settings.ingest.rsync
    found = shutil.which(rsync)
    if found is None:
        where = "" if os.sep in rsync else " on PATH"
        raise RsyncNotFound(f"rsync not found: ingest.rsync is {rsync!r}, and no such "
                            f"executable exists{where}; install rsync or set ingest.rsync")
    return found


def refresh_usage(ctx: Context) -> None:
    """Keep the cached usage of clients with a quota fresh, for ingest's quota check."""
    from xsbackup.snapshots import usage

    for client in ctx.registry.all():
        if client.policy.get("quota_bytes"):
            usage.cached(ctx, client.serial)


class Service:
    def __init__(self, root: str | None, config_file: str | None,
                 overrides: dict[str, Any]) -> None:
        self._args = (root, config_file, overrides)
        self._ctx = Context.open(config.load(root, config_file, overrides), require=False)
        self.lock = threading.Lock()

    def context(self) -> Context:
        """The current context; every thread calls this per unit of work, so SIGHUP's
        reload reaches the SSH and HTTP servers, the post-processor and the scheduler."""
        with self.lock:
            return self._ctx

    def settings(self) -> config.Settings:
        return self.context().settings

    def reload(self) -> None:
        try:
            new = Context.open(config.load(*self._args), require=False)
        except XsbackupError as e:
            LOG.error("SIGHUP: configuration not reloaded: %s", e.message)
            return
        with self.lock:
            self._ctx = new
        path = write_authorized_keys(new.registry)
        LOG.info("SIGHUP: configuration reloaded, %s regenerated", path)

    def run(self, ready: Callable[[str], None] | None = None) -> int:
        from xsbackup import logs
        from xsbackup.server.sshserver import SshServer, listen_error
        from xsbackup.web.app import create_app, make_server

        s = self.settings()
        check_rsync(s)
        init_root(s.root)
        logs.setup(s)
        write_authorized_keys(self.context().registry)
        bind = s.server.bind
        ssh = SshServer(self.settings, bind, s.server.ssh_port) if s.server.embedded_ssh \
            else None
        app = create_app(self.context)
        try:
            http = make_server(app, bind, s.server.http_port, s.http.threads)
        except (OSError, OverflowError) as e:
            if ssh is not None:
                ssh.close()
            raise listen_error("http", bind, s.server.http_port, e) from None
        http_port = http.effective_port
        stop = threading.Event()
        pp_stop = threading.Event()
        scheduler = Scheduler()
        scheduler.add("expire-admissions", 60, lambda: admission.expire_grants(
            self.context(), time.time()))
        scheduler.add("sweep-trash", 3600, lambda: sweep_trash(self.context()))
        scheduler.add("prune", 60, DailyPrune(self.context))
        scheduler.add("check", 60, DailyCheck(self.context))
        scheduler.add("usage", 900, lambda: refresh_usage(self.context()))
        scheduler.add("offsite", 10, OffsiteJob(self.context))
        post = threading.Thread(target=postprocess.watch, args=(self.context, pp_stop),
                                name="postprocess", daemon=True)
        threads = [
            threading.Thread(target=http.run, name="http", daemon=True), post,
            threading.Thread(target=scheduler.loop, args=(stop,), name="scheduler", daemon=True),
        ]
        if ssh is not None:
            threads.append(threading.Thread(target=ssh.serve_forever, name="ssh", daemon=True))
        got: list[int] = []

        def on_stop(signum: int, frame: object) -> None:
            got.append(signum)
            stop.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)

        def on_reload(signum: int, frame: object) -> None:
            self.reload()
            scheduler.wake("prune")

        signal.signal(signal.SIGHUP, on_reload)
        from xsbackup.server.forked import ForkedCommand

        forked = ForkedCommand(self.settings)
        forked.start()
        for t in threads:
            t.start()
        banner = (f"xsbackup serving {s.root}: "
                  + (f"ssh on {bind}:{ssh.port}, " if ssh is not None else
                     "ssh off (server.embedded_ssh = false), ")
                  + f"http on {bind}:{http_port}")
        LOG.info("%s (started %s)", banner, dt.datetime.now(dt.UTC).isoformat())
        if ready is not None:
            ready(banner)
        stopped = False
        while not stopped:  # a second at a time: signal handlers run in between
            stopped = stop.wait(1.0)
        LOG.info("shutting down (signal %s): no new connections", got[0] if got else "?")
        http.close()
        forked.stop()
        timeout = self.settings().server.shutdown_timeout
        if ssh is not None:
            ssh.close()
            if not ssh.wait_idle(timeout):
                LOG.warning("shutdown: transfers still running after %gs; terminating them",
                            timeout)
                ssh.terminate_all()
                ssh.wait_idle(10)
        pp_stop.set()
        post.join(timeout=max(timeout, 5))
        LOG.info("stopped")
        return 0
