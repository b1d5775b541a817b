"""Durable event counters for ``/metrics``, shared by every process of one state root.

The forced command runs in its own process per connection (under OpenSSH or the embedded
server) and the post-processor may run from cron, so in-memory counters would miss most
events. Each event adds to ``<root>/log/counters.json`` under a flock: one small
read-modify-write, about a tenth of a millisecond. Keys are ``name{label="v",...}``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping

from xsbackup.locking import FileLock
from xsbackup.store import Store, atomic_write


def key(name: str, labels: Mapping[str, str] | None = None) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def path(store: Store) -> str:
    return os.path.join(store.root, "log", "counters.json")


def read(store: Store) -> dict[str, float]:
    try:
        with open(path(store), "rb") as fh:
            data = json.loads(fh.read())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def add(store: Store, events: Mapping[str, float]) -> None:
    """Add ``events`` (already keyed with ``key()``); never raises into the caller."""
    with contextlib.suppress(OSError), \
            FileLock(store.locks_dir / "counters.lock").acquire(wait=True):
        data = read(store)
        for k, v in events.items():
            data[k] = data.get(k, 0.0) + v
        atomic_write(store.root / "log" / "counters.json",
                     json.dumps(data, separators=(",", ":")).encode(), sync=False)


def bump(store: Store, name: str, labels: Mapping[str, str] | None = None,
         amount: float = 1.0) -> None:
    add(store, {key(name, labels): amount})
