"""How many downloads stream at once: the one way the JSON API and the web UI send an
archive, a file or a Journal entry.

A streamed download holds one of waitress's worker threads for as long as its client
takes to read it, and a client that reads nothing holds it until ``http.channel_timeout``
cuts it off (``app.HttpServer``). So that downloads can never take every worker (the
availability check and registration need one), at most ``http.max_downloads`` stream at
once, and never more than the server's threads less two; beyond that a download is
refused with 503 and ``Retry-After``. One user may stream ``http.downloads_per_user`` at
once; beyond that, 429 and ``Retry-After``. Each slot is given back when the server is
done with the response (``Stream.close``: sent in full, or its client went away).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flask import Response, current_app

from xsbackup.config import HttpSettings
from xsbackup.restore.downloads import Download
from xsbackup.web.base import NO_STORE, NOSNIFF, HttpError, Plain

GATE_KEY = "xsbackup.downloads"
RETRY_SECONDS = 30
RESERVED_THREADS = 2  # workers no download may take


class DownloadGate:
    """The downloads streaming now, in all and per user (one per application)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = 0
        self._per_user: dict[str, int] = {}
        self.threads: int | None = None  # the server's worker threads, once it has them

    @property
    def running(self) -> int:
        """Downloads streaming now."""
        with self._lock:
            return self._total

    def limit(self, settings: HttpSettings) -> int:
        threads = self.threads if self.threads is not None else settings.threads
        return max(1, min(settings.max_downloads, threads - RESERVED_THREADS))

    def enter(self, user: str, settings: HttpSettings) -> Callable[[], None]:
        """Take a slot for ``user``; returns what gives it back (once)."""
        retry = [("Retry-After", str(RETRY_SECONDS))]
        with self._lock:
            mine = self._per_user.get(user, 0)
            if mine >= settings.downloads_per_user:
                raise HttpError(429, f"{user} already has {mine} download"
                                     f"{'s' * (mine != 1)} running; try again when one "
                                     "has finished", retry)
            if self._total >= self.limit(settings):
                raise HttpError(503, "the server is busy with other downloads; try again "
                                     "shortly", retry)
            self._total += 1
            self._per_user[user] = mine + 1
        given_back = threading.Event()

        def leave() -> None:
            with self._lock:
                if given_back.is_set():
                    return
                given_back.set()
                self._total -= 1
                left = self._per_user[user] - 1
                if left:
                    self._per_user[user] = left
                else:
                    del self._per_user[user]

        return leave


def gate() -> DownloadGate:
    found: DownloadGate = current_app.extensions[GATE_KEY]
    return found


def send(user: str, settings: HttpSettings, make: Callable[[], Download]) -> Response:
    """The response streaming ``make()``'s download, within ``user``'s slots; the checks
    ``make`` does (the snapshot, the path) still answer before anything is streamed."""
    leave = gate().enter(user, settings)
    try:
        headers, stream = make()
    except BaseException:
        leave()
        raise
    stream.when_closed(leave)
    return Plain(stream, 200, [*headers, NO_STORE, NOSNIFF], direct_passthrough=True)
