"""``serve``'s supervision of the pre-loaded forced command server (``cli.forkserver``).

With ``server.forked_command`` on (the default), ``serve`` keeps one
``python -m xsbackup.cli.forkserver --root ROOT`` running: started as a fresh process
(never a fork of ``serve``, which runs threads), in its own process group, restarted
when it ends, stopped at shutdown, each step logged. A SIGHUP that turns the key off
stops it; one that turns it on starts it. Without it (``serve`` down, the key off, the
server dead) every forced command runs alone, as it always could.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from xsbackup import config, layout, procs
from xsbackup.logs import LOG

MODULE = "xsbackup.cli.forkserver"
TICK = 1.0  # seconds between checks (and so between restarts)


class ForkedCommand:
    """Runs ``cli.forkserver`` for ``settings().root`` while ``server.forked_command``
    is on, in a thread of its own (``start``/``stop``)."""

    def __init__(self, settings: Callable[[], config.Settings]) -> None:
        self.settings = settings
        self.proc: procs.Popen[Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="forked-command", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the server (the children it forked finish their connections)."""
        self._stop.set()
        self._thread.join(timeout=procs.GRACE_SECONDS + 5)

    def _loop(self) -> None:
        try:
            while True:
                self._check()
                if self._stop.wait(TICK):
                    break
        finally:
            self._end("serve is stopping")

    def _check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            LOG.warning("forced command server (pid %d) exited with status %s; restarting "
                        "it (forced commands run alone meanwhile)", self.proc.pid,
                        self.proc.returncode)
            self.proc = None
        settings = self.settings()
        if not settings.server.forked_command:
            self._end("server.forked_command is off")
            return
        if self.proc is None:
            self.proc = procs.spawn([sys.executable, "-m", MODULE, "--root",
                                     str(settings.root)], why="forced command server",
                                    stdin=procs.DEVNULL, new_session=True)
            LOG.info("forced command server started (pid %d) on %s", self.proc.pid,
                     layout.forked_socket(settings.root))

    def _end(self, why: str) -> None:
        if self.proc is None:
            return
        status = procs.stop(self.proc)
        LOG.info("forced command server (pid %d) stopped, %s (status %s)", self.proc.pid,
                 why, status)
        self.proc = None
