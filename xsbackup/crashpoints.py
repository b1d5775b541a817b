"""Crash-point injection, for the tests that prove every step is safe to kill.

``XSBACKUP_CRASH_AT=<point>`` makes the process kill itself with SIGKILL when it reaches
the named point (``crash("after-rename")``); no cleanup runs, as after a power cut or an
OOM kill. The variable is read once, at import, so a point costs one string comparison.
The points are named where they are called: the post-processor's steps
(``snapshots.postprocess.CRASH_POINTS``), the promotion's rename and prune's two phases
(``storage``).
"""

from __future__ import annotations

import os
import signal

_ARMED = {"at": os.environ.get("XSBACKUP_CRASH_AT", "")}


def crash(point: str) -> None:
    """Die at once with SIGKILL if ``XSBACKUP_CRASH_AT`` names ``point``."""
    if point == _ARMED["at"]:
        os.kill(os.getpid(), signal.SIGKILL)


def rearm() -> None:
    """Read ``XSBACKUP_CRASH_AT`` again: a process that took another one's environment
    after import (``cli.forkserver``'s child) crashes where that one would have."""
    _ARMED["at"] = os.environ.get("XSBACKUP_CRASH_AT", "")
