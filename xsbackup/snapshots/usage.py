"""What each snapshot really costs (``xsbackup du``), and the cache that keeps it.

For every snapshot of a client the storage backend measures (``Backend.measure``):

* **apparent** bytes: the sum of its regular files' sizes, as the client sees them;
* **exclusive** bytes: the space deleting only that snapshot would free;
* **shared** bytes: the apparent bytes of files also held elsewhere (another snapshot,
  a transfer in progress, ...).

Per client, **total** is the allocated size of everything it holds: its snapshots, and
its transfers that are not snapshots yet (waiting in ``incoming/``, running in
``current/``, or interrupted and kept for resuming); **pending** is what only those
hold. A client's abandoned transfer is its own weight, nobody else's.

Results are cached in ``clients/<SN>/usage.json``, keyed by the exact lists of the
client's snapshots and completed transfers, so any new snapshot, transfer or prune
invalidates them; a client with a ``current/`` (a transfer running or interrupted,
whose size changes with no list changing) is measured every time. This module is the
file's one reader and writer: ``cached`` for the figures (measuring on a miss),
``Tally`` for a run that measures before it deletes and writes only afterwards (prune),
and ``last_total`` for the last measured total even when stale, which the forced
command's quota check and ``status`` read without walking anything. A cache that cannot
be written on a full disk is skipped. The figures are not cached in snapshot xattrs,
although the first plan said so: DESIGN.md section 8 makes a visible snapshot's xattrs
immutable, and a neighbour's prune changes its exclusive size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from typing import TYPE_CHECKING, Any

from xsbackup.storage.base import ClientUsage, MeasureProgress
from xsbackup.store import Store, atomic_write

if TYPE_CHECKING:
    from xsbackup.context import Context

CACHE_NAME = "usage.json"


def _cache_key(ctx: Context, client: str) -> str:
    """What the figures depend on: the snapshots and completed transfers, listed. A
    volume with a transfer running or interrupted (the backend's ``partial_age``: a
    ``current/`` on the hardlink backend, the ``unfinished`` mark or partial files on
    btrfs and reflink, whose ``current/`` always exists) makes a key that never matches
    again."""
    import hashlib  # here only: the forced command imports this module, rarely calls it

    store = ctx.store
    now = time.time()
    h = hashlib.sha256()
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            h.update(f"{volume}/{sid}\n".encode())
        for sid in store.incoming_ids(client, volume):
            h.update(f"{volume}/incoming/{sid}\n".encode())
        if ctx.storage.partial_age(client, volume, now) is not None:
            h.update(f"{volume}/current {os.urandom(8).hex()}\n".encode())
    return h.hexdigest()


def _read(store: Store, client: str) -> dict[str, Any] | None:
    """The cache file's content ({"key", "usage"}), or None when absent or unreadable."""
    try:
        with open(store.client_dir(client) / CACHE_NAME, "rb") as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("usage"), dict):
        return None
    return data


def last_total(store: Store, client: str) -> int | None:
    """The client's total as last measured (possibly stale), or None if never measured.
    One small file read, no tree walk."""
    data = _read(store, client)
    try:
        return int(data["usage"]["total"]) if data is not None else None
    except (KeyError, TypeError, ValueError):
        return None


def cached(ctx: Context, client: str, progress: MeasureProgress | None = None,
           refresh: bool = False, save: bool = True) -> ClientUsage:
    """The client's usage from the cache when it is current, else measured (and, with
    ``save``, cached)."""
    key = _cache_key(ctx, client)
    usage, measured = _lookup(ctx, client, key, progress, refresh)
    if measured and save:
        _save(ctx.store, client, key, usage)
    return usage


def _lookup(ctx: Context, client: str, key: str, progress: MeasureProgress | None,
            refresh: bool) -> tuple[ClientUsage, bool]:
    """The cached figures under ``key``, else measured ones; and whether measured."""
    if not refresh:
        data = _read(ctx.store, client)
        if data is not None and data.get("key") == key:
            with contextlib.suppress(KeyError, TypeError):  # a cache of another shape
                return ClientUsage.from_dict(data["usage"]), False
    return ctx.storage.measure(client, progress), True


def _save(store: Store, client: str, key: str, usage: ClientUsage) -> None:
    """Cache the figures; a disk with no room for them skips it (the next run measures)."""
    if not store.client_dir(client).is_dir():
        return
    import orjson  # here: admission only reads the cache (stdlib json, no orjson import)

    try:
        atomic_write(store.client_dir(client) / CACHE_NAME,
                     orjson.dumps({"key": key, "usage": usage.as_dict()}), sync=False)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise


class Tally:
    """The figures of one run that deletes: measured (or read from the cache) before
    anything is deleted, but written only by ``flush``, afterwards. On a disk with no
    free block or inode left, a cache write would fail before the deletions that free
    room for it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._held: dict[str, tuple[str, ClientUsage, bool]] = {}  # key, figures, measured

    def get(self, client: str) -> ClientUsage:
        key = _cache_key(self.ctx, client)
        held = self._held.get(client)
        if held is not None and held[0] == key:
            return held[1]
        usage, measured = _lookup(self.ctx, client, key, None, False)
        self._held[client] = (key, usage, measured)
        return usage

    def flush(self) -> None:
        """Cache what was measured and is still current."""
        for client, (key, usage, measured) in self._held.items():
            if measured and _cache_key(self.ctx, client) == key:
                _save(self.ctx.store, client, key, usage)
        self._held.clear()


def invalidate(store: Store, client: str) -> None:
    (store.client_dir(client) / CACHE_NAME).unlink(missing_ok=True)
