"""SIGHUP reaches every part of a running ``xsbackup serve``: a changed configuration file
is ignored until the signal, then the post-processor promotes the next snapshot with the
new ``[postprocess]`` and ``[hooks]`` settings, and the scheduler prunes by the new
``[prune] schedule`` and ``[retention]`` policy."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.conftest import Server, local_push
from tests.integration.test_serve import start, stop
from xsbackup.clients.registry import Registry
from xsbackup.store import Store

pytestmark = pytest.mark.integration
SN = "SHF00112233"
VOLUME = "documents"
QUOTA = "[quota]\nsoft_quota_pct = 100.0\n"  # never trim for disk space in this test
# Before: never prune, keep everything of 90 days and every month's first snapshot.
BEFORE = QUOTA + '[prune]\nschedule = ""\n'
# After: prune at once (00:00 has passed today), keeping the two newest snapshots; check
# *.note files as Canonical JSON instead of *.metadata; hooks from another directory.
AFTER = QUOTA + """[prune]
schedule = "00:00"
[retention]
keep_last = 2
keep_within = ""
keep_first_monthly = 0
[postprocess]
cjson_patterns = ["*.note"]
[hooks]
dir = "hooks-v2"
"""


def wait_for(what: str, cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 60  # a hang guard, far beyond any normal run
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def marking_hook(root: Path, hooks_dir: str, marks: str) -> None:
    """A post-snapshot hook in ``hooks_dir`` that appends the snapshot id to ``marks``."""
    hook = root / hooks_dir / "post-snapshot" / "mark"
    hook.parent.mkdir(parents=True)
    hook.write_text(f'#!/bin/sh\necho "$XSBACKUP_SNAPSHOT_ID" >> "$XSBACKUP_ROOT/{marks}"\n')
    hook.chmod(0o755)


def old_snapshots(store: Store, days: list[int]) -> list[str]:
    """Snapshots made ``days`` ago (by the real clock: the scheduler prunes against it)."""
    now = dt.datetime.now(dt.UTC)
    ids = []
    for day in sorted(days, reverse=True):
        sid = (now - dt.timedelta(days=day)).strftime("%Y-%m-%dT%H%M%SZ")
        snap = store.snapshots_dir(SN, VOLUME) / sid
        snap.mkdir(parents=True)
        (snap / f"{day}-days-old.txt").write_text(f"{day}\n")
        ids.append(sid)
    return ids


def checked_files(store: Store, sid: str) -> list[str]:
    """The files the post-processor validated as Canonical JSON in snapshot ``sid``."""
    report = orjson.loads((store.reports_dir(SN) / VOLUME / f"{sid}.cjson.json").read_bytes())
    assert report["summary"]["checked"] == len(report["findings"])
    return [f["path"] for f in report["findings"]]


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_sighup_reaches_the_postprocessor_and_the_scheduler(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    server = Server(root, tmp_path)
    server.configure(BEFORE)
    served = start(root)
    try:
        store = Store(root)
        Registry(store).add(SN, None)
        history = old_snapshots(store, [400, 200, 100, 50, 20, 5])
        marking_hook(root, "hooks", "marks-v1")
        marking_hook(root, "hooks-v2", "marks-v2")
        src = tmp_path / "src"
        src.mkdir()
        # Neither is canonical: what the report flags shows which patterns were used.
        (src / "a.metadata").write_bytes(b'{"b":1,"a":2}')
        (src / "b.note").write_bytes(b'{"d":1,"c":2}')

        def push() -> str:
            before = set(store.snapshot_ids(SN, VOLUME))
            r = local_push(server, SN, src, VOLUME)
            assert r.returncode == 0, r.stderr
            wait_for("the snapshot is promoted", lambda: len(store.snapshot_ids(SN, VOLUME))
                     > len(before) and not os.listdir(store.queue_dir))
            (sid,) = set(store.snapshot_ids(SN, VOLUME)) - before
            return sid

        # The new file is on disk, but without SIGHUP the service still runs the old one.
        server.configure(AFTER)
        first = push()
        assert checked_files(store, first) == ["a.metadata"]
        assert (lines(root / "marks-v1"), lines(root / "marks-v2")) == ([first], [])
        assert store.snapshot_ids(SN, VOLUME) == [*history, first]

        served.proc.send_signal(signal.SIGHUP)
        # The scheduler prunes by the new policy: only the two newest stay.
        wait_for("the scheduled prune", lambda: store.snapshot_ids(SN, VOLUME)
                 == [history[-1], first])
        wait_for("the trash is emptied", lambda: not os.listdir(store.trash_dir))
        # The post-processor promotes the next snapshot with the new settings.
        second = push()
        assert checked_files(store, second) == ["b.note"]
        assert (lines(root / "marks-v1"), lines(root / "marks-v2")) == ([first], [second])
        assert store.snapshot_ids(SN, VOLUME) == [history[-1], first, second]
    finally:
        assert stop(served) == 0
