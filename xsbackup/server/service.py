"""``xsbackup serve``: the whole product in one process on embedded defaults.

Threads: the embedded SSH server, the HTTP server (waitress), the post-processing worker
(``postprocess.watch``) and a scheduler for periodic jobs. The main thread waits for
signals:

* SIGTERM/SIGINT: stop accepting SSH and HTTP connections, stop the post-processor
  after its current entry, give running transfers up to ``server.shutdown_timeout``
  seconds, then terminate what is left (an interrupted transfer is resumed by the
  client's next backup; stored snapshots are never touched) and exit 0;
* SIGHUP: reload the configuration and regenerate ``authorized_keys`` from the registry;
  the scheduled prune checks its (possibly new) schedule at the scheduler's next tick
  rather than at the end of its minute.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xsbackup import config
from xsbackup.clients.registry import write_authorized_keys
from xsbackup.context import Context
from xsbackup.errors import XsbackupError
from xsbackup.ingest import admission
from xsbackup.logs import LOG
from xsbackup.snapshots import postprocess
from xsbackup.store import init_root


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
    the original server did; a busy day's run waits for the load to drop."""

    def __init__(self, get_ctx: Callable[[], Context]) -> None:
        self.get_ctx = get_ctx
        self.done_on: dt.date | None = None

    def due(self, now: dt.datetime) -> bool:
        when = self.get_ctx().settings.prune.schedule.strip()
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
        report = prune.policy_prune(ctx, now.astimezone(dt.UTC))
        ctx.storage.purge()
        quota = prune.quota_trim(ctx)
        pruned = sum(1 for i in report.items if i.outcome == "pruned")
        LOG.info("scheduled prune: %d snapshots pruned by policy; quota: %s", pruned,
                 quota.quota.get("result"))


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
        from xsbackup.server.sshserver import SshServer
        from xsbackup.web.app import create_app, make_server

        s = self.settings()
        init_root(s.root)
        logs.setup(s)
        write_authorized_keys(self.context().registry)
        bind = s.server.bind
        ssh = SshServer(self.settings, bind, s.server.ssh_port)
        app = create_app(self.context)
        http = make_server(app, bind, s.server.http_port, s.http.threads)
        http_port = http.effective_port
        stop = threading.Event()
        pp_stop = threading.Event()
        scheduler = Scheduler()
        scheduler.add("expire-admissions", 60, lambda: admission.expire_grants(
            self.context(), time.time()))
        scheduler.add("sweep-trash", 3600, lambda: sweep_trash(self.context()))
        scheduler.add("prune", 60, DailyPrune(self.context))
        scheduler.add("usage", 900, lambda: refresh_usage(self.context()))
        threads = [
            threading.Thread(target=ssh.serve_forever, name="ssh", daemon=True),
            threading.Thread(target=http.run, name="http", daemon=True),
            threading.Thread(target=postprocess.watch, args=(self.context, pp_stop),
                             name="postprocess", daemon=True),
            threading.Thread(target=scheduler.loop, args=(stop,), name="scheduler", daemon=True),
        ]
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
        for t in threads:
            t.start()
        banner = (f"xsbackup serving {s.root}: ssh on {bind}:{ssh.port}, "
                  f"http on {bind}:{http_port}")
        LOG.info("%s (started %s)", banner, dt.datetime.now(dt.UTC).isoformat())
        if ready is not None:
            ready(banner)
        while not stop.wait(1.0):
            pass
        LOG.info("shutting down (signal %s): no new connections", got[0] if got else "?")
        ssh.close()
        http.close()
        timeout = self.settings().server.shutdown_timeout
        if not ssh.wait_idle(timeout):
            LOG.warning("shutdown: transfers still running after %gs; terminating them",
                        timeout)
            ssh.terminate_all()
            ssh.wait_idle(10)
        pp_stop.set()
        threads[2].join(timeout=max(timeout, 5))
        LOG.info("stopped")
        return 0
