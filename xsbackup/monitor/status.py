"""Server and client status: no snapshot tree is walked.

Per client: the client-directory xattrs, the snapshots' CJSON summaries and the cached
usage. For the server: the disk figure (``store.disk_use``, df's definition; the same
one admission, prune's soft quota, ``/metrics`` and the dashboard use), the storage
backend, and a warning when the state root is open to more than the service account
(and ``storage.root_group``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from xsbackup.clients.registry import Client, Registry
from xsbackup.context import Context
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.snapshots.usage import last_total
from xsbackup.store import Store, disk_use, get_xattrs, root_warnings


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
    """The cached usage (``xsbackup du``) against the client's quota."""
    total = last_total(store, serial)
    limit = quota if isinstance(quota, int) and quota > 0 else None
    return {"usage_bytes": total, "quota_bytes": limit,
            "over_quota": bool(limit and total is not None and total >= limit)}


def check_status(facts: dict[str, str]) -> dict[str, Any]:
    """The client's last integrity check (``integrity.check`` records it): when, damaged
    files and other problems found, and when its sample last covered every inode."""
    damaged = facts.get("check_damaged", "")
    problems = facts.get("check_problems", "")
    return {"check_at": facts.get("check_at"),
            "check_damaged": int(damaged) if damaged.isdigit() else None,
            "check_problems": int(problems) if problems.isdigit() else None,
            "check_covered_at": facts.get("check_covered_at")}


def client_rows(store: Store, now: dt.datetime,
                clients: Iterable[Client] | None = None) -> list[dict[str, Any]]:
    """One row per client: every registered one, or those of ``clients``."""
    rows = []
    for client in Registry(store).all() if clients is None else clients:
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
            **check_status(facts),
        })
    return rows


def server_status(ctx: Context, now: dt.datetime) -> dict[str, Any]:
    """``xsbackup status --json``: the disk figure, the storage backend, every client,
    and what is wrong with the state root's permissions (``warnings``)."""
    return {"disk": disk_use(ctx.store.root).as_dict(),
            "storage": ctx.storage.describe().as_dict(),
            "clients": client_rows(ctx.store, now),
            "warnings": root_warnings(ctx.store.root, ctx.settings.storage.root_group),
            **_offsite(ctx, now)}


def _offsite(ctx: Context, now: dt.datetime) -> dict[str, Any]:
    """The off-site replication (``xsbackup.offsite``), when a repository is configured."""
    if not ctx.settings.offsite.repository:
        return {}
    from xsbackup.offsite import replicate  # only then: most servers have none

    return {"offsite": replicate.status(ctx, now)}
