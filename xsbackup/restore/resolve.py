"""Which snapshot a request names: the volume, then ``latest``, an id, a minute or a time.

One rule for every reader: the CLI, the SSH verbs and rsync downloads, the JSON API and
the web UI. Only real directories in ``snapshots/`` are snapshots: an entry named like a
snapshot id that is a symlink (or anything but a directory) is never followed, and is
treated as absent wherever it is asked for (by id, as ``latest``'s target, or by time).
"""

from __future__ import annotations

import datetime as dt
import os
import stat

from xsbackup.errors import InvalidName, SnapshotNotFound
from xsbackup.store import SNAPSHOT_RE, Store, check_volume, snapshot_time

MINUTE = "minute:"  # ds-backup's datastore-<YYYY-MM-DD_HH:MM>: the snapshot of that minute


def pick_volume(store: Store, client: str, volume: str | None) -> str:
    """``volume`` if given, else the client's only volume."""
    if volume:
        return check_volume(volume)
    vols = store.volumes(client)
    if len(vols) == 1:
        return vols[0]
    if not vols:
        raise SnapshotNotFound(f"{client} has no snapshots yet")
    raise InvalidName(f"{client} has several volumes ({', '.join(vols)}); choose one")


def exists(store: Store, client: str, volume: str, sid: str) -> bool:
    """Whether ``sid`` is a snapshot: a well-formed id naming a real directory (lstat)."""
    if not SNAPSHOT_RE.fullmatch(sid):
        return False
    try:
        st = os.lstat(store.snapshots_dir(client, volume) / sid)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return stat.S_ISDIR(st.st_mode)


def snapshot_ids(store: Store, client: str, volume: str) -> list[str]:
    """The volume's snapshots, oldest first; symlinks named like ids left out."""
    return [i for i in store.snapshot_ids(client, volume) if exists(store, client, volume, i)]


def latest(store: Store, client: str, volume: str) -> str | None:
    """The snapshot ``latest`` names, else (no link, or its target gone) the newest one;
    None if the volume has none."""
    ids = snapshot_ids(store, client, volume)
    return _latest_of(store, client, volume, ids) if ids else None


def _latest_of(store: Store, client: str, volume: str, ids: list[str]) -> str:
    named = store.latest_id(client, volume)
    return named if named in ids else ids[-1]


def resolve(store: Store, client: str, volume: str, at: str | None) -> str:
    """The snapshot ``at`` names: None, "" or "latest" (``latest``); a snapshot id;
    ``minute:YYYY-MM-DD_HH:MM`` (the newest of that minute); or an ISO time, meaning the
    newest snapshot at or before it (UTC unless it says otherwise)."""
    ids = snapshot_ids(store, client, volume)
    if not ids:
        raise SnapshotNotFound(f"{volume} has no snapshot yet")
    if at is None or at in ("", "latest"):
        return _latest_of(store, client, volume, ids)
    if SNAPSHOT_RE.fullmatch(at):
        if at in ids:
            return at
        raise SnapshotNotFound(f"no snapshot {at} of {volume}")
    if at.startswith(MINUTE):
        return _of_minute(ids, volume, at[len(MINUTE):])
    found = at_or_before(ids, at)
    if found is None:
        raise SnapshotNotFound(f"no snapshot of {volume} at or before {at}")
    return found


def at_or_before(ids: list[str], at: str) -> str | None:
    """The newest of ``ids`` (oldest first) taken at or before the ISO time ``at`` (UTC
    unless it says otherwise); None if all are newer. The one reading of a time for local
    and off-site snapshots."""
    try:
        when = dt.datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidName(f"{at[:80]!r} is neither a snapshot id nor an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    older = [i for i in ids if snapshot_time(i) <= when]
    return older[-1] if older else None


def _of_minute(ids: list[str], volume: str, minute: str) -> str:
    """``minute`` is ``YYYY-MM-DD_HH:MM``; ids are ``YYYY-MM-DDTHHMMSSZ[-N]``."""
    stamp = minute.replace("_", "T").replace(":", "").replace("-", "")
    matches = [i for i in ids if i.replace("-", "")[:13] == stamp]
    if not matches:
        raise SnapshotNotFound(f"no {volume} snapshot from {minute}")
    return matches[-1]
