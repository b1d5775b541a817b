"""The data behind the web UI's dashboard and client pages, and their SVG charts.

Everything here reads the state root and returns plain values for the templates; no
HTML is built here (the templates escape every value), except the numbers and class
names of the charts' SVG geometry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xsbackup.clients import registration
from xsbackup.clients.registry import Client, Registry
from xsbackup.config import Settings
from xsbackup.context import Context
from xsbackup.errors import ClientNotFound, StateRootError
from xsbackup.logs import LOG
from xsbackup.monitor import status
from xsbackup.offsite import replicate
from xsbackup.offsite import state as offsite_state
from xsbackup.restore import resolve
from xsbackup.retention import policy as retention
from xsbackup.retention import prune
from xsbackup.snapshots import queue as work_queue
from xsbackup.snapshots import usage
from xsbackup.snapshots.snapshot import read_facts
from xsbackup.store import (
    Store,
    check_client,
    disk_use,
    get_xattrs,
    iter_clients,
    snapshot_time,
)

SORTS = ("serial", "nickname", "last", "age", "snapshots", "usage", "error")
QUEUE_SHOWN = 50


# ---- formatting (also the templates' filters) ------------------------------------------


IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: object) -> str:
    """A size in IEC units (1 KiB = 1024 B), as everywhere in the web UI."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "—"
    value = float(n)
    for unit in IEC_UNITS:
        if abs(value) < 1024 or unit == IEC_UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable: the last unit always returns")


def human_age(seconds: object) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "never"
    s = max(0, int(seconds))
    if s < 3600:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _as_time(value: object) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return parse_time(value)


def local_time(value: object) -> str:
    """A time (ISO text, datetime or Unix seconds) in the server's time zone."""
    when = _as_time(value)
    return when.astimezone().strftime("%Y-%m-%d %H:%M") if when is not None else "—"


def iso(value: object) -> str:
    when = _as_time(value)
    return when.isoformat(timespec="seconds") if when is not None else ""


# ---- dashboard -------------------------------------------------------------------------


def _sort_key(name: str) -> Callable[[dict[str, Any]], Any]:
    big = float("inf")
    keys: dict[str, Callable[[dict[str, Any]], Any]] = {
        "serial": lambda r: r["serial"],
        "nickname": lambda r: (r["nickname"].casefold(), r["serial"]),
        "last": lambda r: (r["last_success"] or "", r["serial"]),
        "age": lambda r: (big if r["age_seconds"] is None else r["age_seconds"], r["serial"]),
        "snapshots": lambda r: (r["snapshot_count"], r["serial"]),
        "usage": lambda r: (r["usage_bytes"] or 0, r["serial"]),
        "error": lambda r: (r["last_error"] or "", r["serial"]),
    }
    return keys[name]


UNREADABLE = "the registry record is unreadable; see the log"


class ReadableRegistry(Registry):
    """The registry as one page lists it: ``all()`` is every record that could be read,
    and ``unreadable`` names the clients whose ``client.json`` could not be (each one
    logged), so one corrupt record breaks only its own client, not every listing."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.clients: list[Client] = []
        self.unreadable: list[str] = []
        for serial in iter_clients(store):
            try:
                if self.exists(serial):
                    self.clients.append(self.get(serial))
            except (StateRootError, OSError) as e:
                LOG.error("client=%s registry record unreadable, left out of the listing: %s",
                          serial, e.message if isinstance(e, StateRootError) else e)
                self.unreadable.append(serial)

    def all(self) -> list[Client]:
        return list(self.clients)


def unreadable_row(serial: str) -> dict[str, Any]:
    """A client row (``status.client_rows``' keys) saying its record is unreadable."""
    return {"serial": serial, "unreadable": True, "error": UNREADABLE, "nickname": "",
            "disabled": False, "last_success": None, "age": None, "age_seconds": None,
            "snapshot_count": 0, "last_transfer": None, "last_completion": None,
            "last_error": UNREADABLE, "flagged": [], "usage_bytes": None,
            "quota_bytes": None, "over_quota": False}


def client_list(registry: ReadableRegistry, now: dt.datetime) -> list[dict[str, Any]]:
    """Every client's row, those with an unreadable record included (marked so)."""
    rows = [{**r, "unreadable": False}
            for r in status.client_rows(registry.store, now, registry.clients)]
    return rows + [unreadable_row(sn) for sn in registry.unreadable]


def pending_registrations(registry: Registry) -> list[dict[str, Any]]:
    """Keys awaiting approval, with the client's nickname and how many active keys an
    approval would retire (0: a new device)."""
    waiting = []
    for request in registration.pending(registry):
        serial = request.serial
        try:
            client: Client | None = registry.get(serial)
        except ClientNotFound:
            client = None
        active = len(client.active_keys()) if client else 0
        waiting.append({**registration.request_summary(registry, request),
                        "nickname": client.nickname if client else request.nickname,
                        "replaces": active})
    return waiting


def dashboard(settings: Settings, store: Store, query: str, sort: str, order: str,
              now: dt.datetime) -> dict[str, Any]:
    overdue_after = settings.ui.overdue_days * 86400
    registry = ReadableRegistry(store)
    waiting = pending_registrations(registry)
    # A new device waiting for approval cannot back up yet: it is not overdue.
    awaiting = {p["serial"] for p in waiting if not p["replaces"]}
    rows = client_list(registry, now)
    for r in rows:
        r["awaiting"] = r["serial"] in awaiting
        r["overdue"] = not r["disabled"] and not r["awaiting"] and not r["unreadable"] and (
            r["age_seconds"] is None or r["age_seconds"] > overdue_after)
    total = len(rows)
    overdue = sum(1 for r in rows if r["overdue"])
    needle = query.strip().casefold()
    if needle:
        rows = [r for r in rows if needle in r["serial"].casefold()
                or needle in r["nickname"].casefold()]
    sort = sort if sort in SORTS else "age"
    order = order if order in ("asc", "desc") else ("desc" if sort == "age" else "asc")
    rows.sort(key=_sort_key(sort), reverse=order == "desc")
    use = disk_use(store.root)
    soft = settings.quota.soft_quota_pct
    queue = work_queue.pending(store)
    return {
        "rows": rows, "total": total, "overdue_count": overdue, "query": query,
        "sort": sort, "order": order, "overdue_days": settings.ui.overdue_days,
        "pending": waiting,
        "disk": {"blocks_pct": use.blocks_pct, "inodes_pct": use.inodes_pct,
                 "free_bytes": use.free_bytes, "soft_pct": soft,
                 "refuse_blocks_pct": settings.admission.max_blocks_pct,
                 "refuse_inodes_pct": settings.admission.max_inodes_pct,
                 "over_soft": use.blocks_pct > soft or use.inodes_pct > soft},
        "queue": [{"client": e.client, "volume": e.volume, "id": e.id,
                   "recovered": bool(e.data.get("recovered"))} for e in queue[:QUEUE_SHOWN]],
        "queue_count": len(queue),
        "offsite": offsite_summary(settings, store, now),
    }


def offsite_summary(settings: Settings, store: Store, now: dt.datetime) -> dict[str, Any]:
    """The dashboard's off-site box: the repository's last run and error, and the
    clients not yet all off-site, largest lag first ({} when none is configured)."""
    if not settings.offsite.repository:
        return {}
    repo = offsite_state.load_repo(store)
    behind = sorted((r for r in replicate.client_status(store, settings.offsite.volumes, now)
                     if r["pending"] or r["failures"]), key=lambda r: -r["lag_seconds"])
    return {"last_run": repo.last_run, "error": repo.last_error if repo.failures else "",
            "behind": behind[:QUEUE_SHOWN], "behind_count": len(behind)}


# ---- charts ----------------------------------------------------------------------------


@dataclass
class Chart:
    """Geometry of one inline SVG chart (the template draws it; every number is ours)."""

    id: str
    title: str
    description: str
    width: int = 640
    height: int = 200
    left: int = 72
    bottom: int = 34
    top: int = 12
    right: int = 12
    bars: list[dict[str, Any]] = field(default_factory=list)
    points: list[dict[str, Any]] = field(default_factory=list)
    polyline: str = ""
    yticks: list[dict[str, Any]] = field(default_factory=list)
    xlabels: list[dict[str, Any]] = field(default_factory=list)
    legend: list[dict[str, Any]] = field(default_factory=list)

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom


def _ticks(chart: Chart, top: float) -> float:
    """Y ticks at 0, half and the rounded maximum; returns the maximum. The maximum is
    round in the IEC unit its labels are shown in (50 KiB, not 48.8 KiB)."""
    top = max(top, 1.0)
    unit = 1
    while top >= unit * 1024 and unit < 1024 ** (len(IEC_UNITS) - 1):
        unit *= 1024
    scaled = top / unit
    magnitude = 10 ** (len(str(int(scaled))) - 1)
    nice = unit * next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= scaled)
    span = chart.plot_bottom - chart.top
    chart.yticks = [{"y": round(chart.plot_bottom - span * f, 1), "label": human_bytes(nice * f)}
                    for f in (0.0, 0.5, 1.0)]
    return float(nice)


def _x_labels(chart: Chart, xs: list[float], times: list[dt.datetime]) -> None:
    """Dates under the first, middle and last bars (times of day within one day)."""
    if not xs:
        return
    fmt = "%Y-%m-%d" if times[-1] - times[0] >= dt.timedelta(days=1) else "%H:%M"
    picks = sorted({0, len(xs) - 1, len(xs) // 2} if len(xs) > 2 else set(range(len(xs))))
    seen: set[str] = set()
    for i in picks:
        label = times[i].astimezone().strftime(fmt)
        if label in seen:
            continue
        seen.add(label)
        anchor = "middle" if len(xs) == 1 else ("start" if i == 0 else
                                               ("end" if i == len(xs) - 1 else "middle"))
        chart.xlabels.append({"x": round(xs[i], 1), "label": label, "anchor": anchor})


def charts(snaps: list[dict[str, Any]], volumes: list[str]) -> list[Chart]:
    """New bytes per snapshot (bars, one colour per volume) and the space the kept
    snapshots hold over time (a line: the running sum of their new bytes)."""
    ordered = sorted(snaps, key=lambda s: (s["time"], s["volume"], s["id"]))
    new = Chart("chart-new", "New bytes per snapshot",
                "Bytes each snapshot added that the previous one of its volume did not "
                "have, oldest on the left.")
    held = Chart("chart-usage", "Disk usage over time",
                 "Space held by this client's kept snapshots after each snapshot: the "
                 "running sum of their new bytes.")
    if not ordered:
        return [new, held]
    n = len(ordered)
    span = new.width - new.left - new.right
    step = span / n
    xs = [new.left + step * (i + 0.5) for i in range(n)]
    times = [s["time"] for s in ordered]
    top = _ticks(new, max(s["new_bytes"] for s in ordered))
    height = new.plot_bottom - new.top
    bar_w = max(1.0, min(step * 0.8, 40.0))
    for x, s in zip(xs, ordered, strict=True):
        h = height * s["new_bytes"] / top
        new.bars.append({"x": round(x - bar_w / 2, 1), "y": round(new.plot_bottom - h, 1),
                         "w": round(bar_w, 1), "h": round(h, 1),
                         "cls": f"series{volumes.index(s['volume']) % 6}",
                         "label": f"{s['volume']} {local_time(s['time'])}: "
                                  f"{human_bytes(s['new_bytes'])} new"})
    new.legend = [{"cls": f"series{i % 6}", "label": v} for i, v in enumerate(volumes)]
    running, totals = 0, []
    for s in ordered:
        running += s["new_bytes"]
        totals.append(running)
    top = _ticks(held, float(totals[-1]))
    for x, total, s in zip(xs, totals, ordered, strict=True):
        y = held.plot_bottom - height * total / top
        held.points.append({"x": round(x, 1), "y": round(y, 1),
                            "label": f"{local_time(s['time'])}: {human_bytes(total)}"})
    held.polyline = " ".join(f"{p['x']},{p['y']}" for p in held.points)
    _x_labels(new, xs, times)
    _x_labels(held, xs, times)
    return [new, held]


# ---- the client page -------------------------------------------------------------------


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def policy_rows(settings: Settings, client: Client) -> list[dict[str, Any]]:
    policy = prune.policy_for(settings, client)
    values = retention.policy_to_mapping(policy)
    return [{"key": k, "value": values.get(k, ""), "override": k in client.policy}
            for k in prune.POLICY_KEYS]


def client_page(settings: Settings, store: Store, serial: str,
                now: dt.datetime) -> dict[str, Any]:
    check_client(serial)
    registry = Registry(store)
    client = registry.get(serial)
    facts = get_xattrs(store.client_dir(serial))
    last = facts.get("last_success")
    when = parse_time(last)
    age = int((now - when).total_seconds()) if when else None
    overdue = not client.disabled and (
        age is None or age > settings.ui.overdue_days * 86400)
    use = usage.cached(Context(settings, store, registry), serial)
    plan = prune.plan_client(Context(settings, store, registry), client, now)
    verdicts = {(i.volume, i.id): i for i in plan}
    volumes = store.volumes(serial)
    vol_rows, snaps = [], []
    for volume in volumes:
        ids = resolve.snapshot_ids(store, serial, volume)
        rows = []
        for sid in ids:
            f = read_facts(store.snapshots_dir(serial, volume) / sid)
            item = verdicts.get((volume, sid))
            row = {"id": sid, "volume": volume, "time": snapshot_time(sid),
                   "files": _int(f.get("files")), "bytes": _int(f.get("bytes")),
                   "new_bytes": _int(f.get("new_bytes")),
                   "exclusive": use.exclusive_of(volume, sid),
                   "keep": item.keep if item else True,
                   "reasons": ", ".join(item.reasons) if item else ""}
            rows.append(row)
            snaps.append(row)
        vol_rows.append({"name": volume, "snapshots": rows[::-1], "count": len(ids),
                         "latest": resolve.latest(store, serial, volume)})
    doomed = [dataclasses.asdict(i) for i in plan if not i.keep]
    listed = ReadableRegistry(store).all()
    others = sorted(c.serial for c in listed if c.serial != serial)
    aliased_by = sorted(c.serial for c in listed if serial in c.aliases)
    return {
        "client": client, "keys": [registration.key_summary(k) for k in client.keys],
        "last_success": last, "age_seconds": age, "overdue": overdue,
        "last_error": facts.get("last_error"), "last_error_at": facts.get("last_error_at"),
        "usage_total": use.total, "quota_bytes": prune.quota_bytes(client),
        "volumes": vol_rows, "charts": charts(snaps, volumes),
        "policy": policy_rows(settings, client), "doomed": doomed,
        "freed": sum(i["exclusive"] for i in doomed), "others": others,
        "aliased_by": aliased_by,
    }


def prune_plan(settings: Settings, store: Store, serial: str,
               now: dt.datetime) -> tuple[Client, list[prune.Item]]:
    registry = Registry(store)
    client = registry.get(check_client(serial))
    return client, prune.plan_client(Context(settings, store, registry), client, now)


def run_prune(settings: Settings, store: Store, serial: str, confirmed: set[str],
              now: dt.datetime) -> list[prune.Item]:
    """Prune what the admin confirmed and the policy still prunes now: a snapshot the
    plan no longer condemns (or one not shown on the confirmation page) is kept."""
    _, items = prune_plan(settings, store, serial, now)
    for item in items:
        if not item.keep and f"{item.volume}/{item.id}" not in confirmed:
            item.keep = True
            item.reasons = ("not confirmed",)
    prune.apply(Context(settings, store, Registry(store)), items)
    return [i for i in items if not i.keep]
