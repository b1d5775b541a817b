"""The post-processing queue: one file per completed transfer (DESIGN.md 3.5 and 4).

``queue/<id>.<client>.<volume>.json`` names a transfer waiting in ``incoming/<id>`` and
holds its origin (rsync exit, times, remote). Ingest writes an entry after its rename; the
post-processor lists, marks and removes them; a sweep re-queues an ``incoming/<id>`` whose
entry was lost when ingest was killed between its rename and its write. Everything about
an entry's name and contents is here.

This module sits in ``snapshots/`` although ingest writes the entries: ``snapshots`` is
below ``ingest`` in the layering, and the post-processor is the queue's consumer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from xsbackup.errors import InvalidName
from xsbackup.records import record
from xsbackup.store import (
    Store,
    atomic_write,
    check_client,
    check_snapshot_id,
    check_volume,
    iter_clients,
    snapshot_sort_key,
)


@record(frozen=True)
class Entry:
    path: Path
    client: str
    volume: str
    id: str
    data: dict[str, Any]


def entry_name(sid: str, client: str, volume: str) -> str:
    return f"{sid}.{client}.{volume}.json"


def _parse_name(name: str) -> tuple[str, str, str] | None:
    """(id, client, volume) of a well-formed entry name, else None."""
    parts = name.split(".")
    if len(parts) < 4 or parts[-1] != "json" or name.startswith("."):
        return None
    try:
        return (check_snapshot_id(parts[0]), check_client(parts[1]),
                check_volume(".".join(parts[2:-1])))
    except InvalidName:
        return None


def write(store: Store, sid: str, client: str, volume: str, data: dict[str, Any]) -> Path:
    """Queue (or rewrite) the entry of ``client``'s ``volume`` transfer ``sid``,
    atomically and durably."""
    path = store.queue_dir / entry_name(sid, client, volume)
    atomic_write(path, _dumps({"id": sid, "client": client, "volume": volume, **data}))
    return path


def _dumps(data: dict[str, Any]) -> bytes:
    """An entry's bytes: compact, keys sorted (stdlib json: the forced command writes one
    entry per backup and must not pay orjson's import, which loads dataclasses too)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def mark_promoted(entry: Entry) -> None:
    """Record that the entry's snapshot is visible (a rerun then only finishes up)."""
    if not entry.data.get("promoted"):
        atomic_write(entry.path, _dumps({**entry.data, "promoted": True}))


def read(path: Path) -> Entry | None:
    """The entry at ``path``; None for a name that is not an entry or an unreadable file."""
    parsed = _parse_name(path.name)
    if parsed is None:
        return None
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, OSError):
        return None
    sid, client, volume = parsed
    return Entry(path, client, volume, sid, data if isinstance(data, dict) else {})


def _names(store: Store) -> list[str]:
    try:
        names = os.listdir(store.queue_dir)
    except FileNotFoundError:
        return []
    return [n for n in names if _parse_name(n) is not None]


def depth(store: Store) -> int:
    """How many entries wait (names only; no entry is read)."""
    return len(_names(store))


def pending(store: Store) -> list[Entry]:
    """Every readable entry, oldest transfer first."""
    entries = [e for n in _names(store) if (e := read(store.queue_dir / n)) is not None]
    return sorted(entries, key=lambda e: (snapshot_sort_key(e.id), e.client, e.volume))


def requeue_orphans(store: Store) -> int:
    """Queue ``incoming/<id>`` trees that have no entry (ingest killed mid-mark)."""
    queued = {(e.id, e.client, e.volume) for e in pending(store)}
    n = 0
    for client in iter_clients(store):
        for volume in store.volumes(client):
            for sid in store.incoming_ids(client, volume):
                if (sid, client, volume) not in queued:
                    write(store, sid, client, volume, {"recovered": True})
                    n += 1
    return n
