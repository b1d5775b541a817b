"""Client status from the client-directory xattrs: no snapshot tree is walked."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from xsbackup.clients.registry import Registry
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import Store, get_xattrs


def _age(since: str | None, now: dt.datetime) -> str | None:
    if not since:
        return None
    try:
        then = dt.datetime.fromisoformat(since)
    except ValueError:
        return None
    secs = max(0, int((now - then).total_seconds()))
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 86400 * 2:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _age_seconds(since: str | None, now: dt.datetime) -> int | None:
    try:
        return int((now - dt.datetime.fromisoformat(since)).total_seconds()) if since else None
    except (TypeError, ValueError):
        return None


def flagged_snapshots(store: Store, client: str) -> list[str]:
    """Snapshots whose metadata was flagged: one getxattr per snapshot directory."""
    out = []
    for volume in store.volumes(client):
        for sid in store.snapshot_ids(client, volume):
            cj = read_facts(store.snapshots_dir(client, volume) / sid).get("cjson")
            if isinstance(cj, dict) and cj.get("status") == "flagged":
                out.append(f"{volume}/{sid}")
    return out


def _usage(store: Store, serial: str, quota: object) -> dict[str, Any]:
    """The cached hardlink-aware usage (``xsbackup du``) against the client's quota."""
    try:
        total: int | None = int(orjson.loads(
            (store.client_dir(serial) / "usage.json").read_bytes())["usage"]["total"])
    except (OSError, ValueError, KeyError, TypeError):
        total = None
    limit = quota if isinstance(quota, int) and quota > 0 else None
    return {"usage_bytes": total, "quota_bytes": limit,
            "over_quota": bool(limit and total is not None and total >= limit)}


def client_rows(store: Store, now: dt.datetime) -> list[dict[str, Any]]:
    rows = []
    for client in Registry(store).all():
        facts = get_xattrs(store.client_dir(client.serial))
        last = facts.get("last_success")
        rows.append({
            "serial": client.serial,
            "nickname": client.nickname,
            "disabled": client.disabled,
            "last_success": last,
            "age": _age(last, now),
            "age_seconds": _age_seconds(last, now),
            "snapshot_count": int(facts.get("snapshot_count", "0") or 0),
            "last_transfer": facts.get("last_transfer"),
            "last_completion": facts.get("last_completion"),
            "last_error": facts.get("last_error"),
            "flagged": flagged_snapshots(store, client.serial),
            **_usage(store, client.serial, client.policy.get("quota_bytes")),
        })
    return rows
