"""What each snapshot really costs (``xsbackup du``), and the cache that keeps it.

For every snapshot of a client the storage backend measures (``Backend.measure``):

* **apparent** bytes: the sum of its regular files' sizes, as the client sees them;
* **exclusive** bytes: the space deleting only that snapshot would free;
* **shared** bytes: the apparent bytes of files also held elsewhere (another snapshot,
  a transfer in progress, ...).

Per client, **total** is the allocated size of everything its snapshots hold.

Results are cached in ``clients/<SN>/usage.json``, keyed by the exact list of the
client's snapshots, so any new snapshot or prune invalidates them. This module is the
file's one reader and writer: ``cached`` for the figures (measuring on a miss) and
``last_total`` for the last measured total even when stale, which the forced command's
quota check and ``status`` read without walking anything. They are not cached in
snapshot xattrs, although the first plan said so: DESIGN.md section 8 makes a visible
snapshot's xattrs immutable, and a neighbour's prune changes its exclusive size.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from xsbackup.storage.base import ClientUsage, MeasureProgress
from xsbackup.store import Store, atomic_write

if TYPE_CHECKING:
    from xsbackup.context import Context

CACHE_NAME = "usage.json"


def _cache_key(store: Store, client: str) -> str:
    h = hashlib.sha256()
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            h.update(f"{volume}/{sid}\n".encode())
    return h.hexdigest()


def _read(store: Store, client: str) -> dict[str, Any] | None:
    """The cache file's content ({"key", "usage"}), or None when absent or unreadable."""
    try:
        with open(store.client_dir(client) / CACHE_NAME, "rb") as fh:
            data = orjson.loads(fh.read())
    except (OSError, orjson.JSONDecodeError):
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
           refresh: bool = False) -> ClientUsage:
    """The client's usage from the cache when it is current, else measured (and cached)."""
    store = ctx.store
    key = _cache_key(store, client)
    if not refresh:
        data = _read(store, client)
        if data is not None and data.get("key") == key:
            try:
                return ClientUsage.from_dict(data["usage"])
            except (KeyError, TypeError):
                pass
    usage = ctx.storage.measure(client, progress)
    if store.client_dir(client).is_dir():
        atomic_write(store.client_dir(client) / CACHE_NAME,
                     orjson.dumps({"key": key, "usage": usage.as_dict()}), sync=False)
    return usage


def invalidate(store: Store, client: str) -> None:
    (store.client_dir(client) / CACHE_NAME).unlink(missing_ok=True)
