"""Logging to ``<root>/log/xsbackup.log`` or syslog; never to an SSH client's stderr.

Every record about a client carries ``client=SN`` (and ``volume=``/``snapshot=`` where
they apply) in its message, so one grep follows a device through ingest and snapshots.
"""

from __future__ import annotations

import logging
import os

from xsbackup.config import Settings

LOG = logging.getLogger("xsbackup")
_state: dict[str, str] = {}


class WatchedFile(logging.FileHandler):
    """``logging.handlers.WatchedFileHandler``'s behaviour: the file is reopened when it
    was moved or deleted (logrotate), checked before each record. Defined here because
    importing ``logging.handlers`` costs every forced command about 7 ms (it imports
    socket, pickle and queue)."""

    def __init__(self, filename: str | os.PathLike[str]) -> None:
        super().__init__(filename, delay=False)
        self._id = self._stat_id()

    def _stat_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.baseFilename)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def emit(self, record: logging.LogRecord) -> None:
        now = self._stat_id()
        if now is None or now != self._id:
            if self.stream is not None:
                self.stream.flush()
                self.stream.close()
            self.stream = self._open()
            self._id = self._stat_id()
        super().emit(record)


def setup(settings: Settings, *, stderr: bool = False) -> None:
    """Route the ``xsbackup`` logger. Idempotent per target."""
    target = settings.log.target
    key = f"{target}:{settings.root}:{stderr}"
    if _state.get("configured") == key:
        return
    for h in list(LOG.handlers):
        LOG.removeHandler(h)
        h.close()
    LOG.setLevel(settings.log.level.upper())
    LOG.propagate = False
    handler: logging.Handler
    if target == "syslog" and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # here only: socket, pickle, queue

        handler = SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("xsbackup[%(process)d]: %(levelname)s %(message)s"))
    else:
        log_dir = settings.root / "log"
        if log_dir.is_dir():
            handler = WatchedFile(log_dir / "xsbackup.log")
        else:
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(process)d %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z"))
    LOG.addHandler(handler)
    # The WSGI server logs through its own loggers: into our log, never stderr. Its
    # "task queue depth" warning fires on every request under load; it says nothing a
    # metric would not, so only errors are kept.
    waitress = logging.getLogger("waitress")
    for h in list(waitress.handlers):
        waitress.removeHandler(h)
    waitress.addHandler(handler)
    waitress.propagate = False
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if stderr:
        err = logging.StreamHandler()
        err.setFormatter(logging.Formatter("xsbackup: %(message)s"))
        err.setLevel(logging.WARNING)
        LOG.addHandler(err)
    _state["configured"] = key
