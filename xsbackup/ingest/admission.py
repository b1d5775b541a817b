"""Admission: may this client transfer now? (DESIGN.md section 3.2)

Each refusal is its own error class with its own exit code and a one-line reason. The
checks are cheap (one ``getloadavg``, one ``statvfs``, a couple of ``stat`` calls) because
they run on every connection. The stdlib calls are what psutil would make here anyway,
so the forced command does not pay psutil's import.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

from xsbackup.clients.registry import Client, Registry
from xsbackup.context import Context
from xsbackup.errors import (
    ClientDisabled,
    DiskFull,
    InodesFull,
    LoadTooHigh,
    Maintenance,
    OverQuota,
    UnknownClient,
)
from xsbackup.ingest.window import Memory, admissions_dir
from xsbackup.records import record
from xsbackup.snapshots.usage import last_total
from xsbackup.store import Store, disk_use
from xsbackup.units import format_bytes


def maintenance_on(ctx: Context) -> bool:
    return ctx.settings.admission.maintenance or ctx.store.maintenance_flag.exists()


def check_client(registry: Registry, serial: str) -> Client:
    if not registry.exists(serial):
        raise UnknownClient(f"unknown client {serial}")
    client = registry.get(serial)
    if client.disabled:
        raise ClientDisabled(f"client {serial} is disabled")
    return client


def check_quota(store: Store, client: Client) -> None:
    """Refuse a client whose cached usage (``xsbackup du``, kept by the post-processor
    and prune) is at or over its ``quota_bytes``. One small file read, no tree walk."""
    limit = client.policy.get("quota_bytes")
    if not isinstance(limit, int) or limit <= 0:
        return
    total = last_total(store, client.serial)
    if total is None:
        return  # never measured: nothing to hold against the client yet
    if total >= limit:
        raise OverQuota(f"client {client.serial} is over its quota: {format_bytes(total)} of "
                        f"{format_bytes(limit)} used; ask the administrator to prune or raise "
                        "the quota")


def check_server(ctx: Context, reserved: bool = False) -> None:
    """Maintenance, load and disk checks, in that order. A client holding a reservation
    from the availability check is not refused for load: it was admitted already."""
    settings = ctx.settings
    if maintenance_on(ctx):
        raise Maintenance("server is in maintenance mode; try again later")
    load1 = os.getloadavg()[0]
    limit = settings.admission.max_load
    if not reserved and (load1 > limit or (limit == 0 and load1 >= 0)):
        raise LoadTooHigh(f"server busy: load average {load1:.2f} is over the limit {limit:g}")
    use = disk_use(ctx.store.root)
    if use.blocks_pct > settings.admission.max_blocks_pct:
        raise DiskFull(
            f"server disk full: {use.blocks_pct:.1f}% of blocks used "
            f"(limit {settings.admission.max_blocks_pct:g}%)"
        )
    if use.inodes_pct > settings.admission.max_inodes_pct:
        raise InodesFull(
            f"server out of inodes: {use.inodes_pct:.1f}% used "
            f"(limit {settings.admission.max_inodes_pct:g}%)"
        )


# ---- the availability window (ds-backup's GET /backup/1/available/<SN>) -----------------
#
# A 200 writes ``<root>/admissions/<SN>`` (its mtime is the grant; its content says from
# which address, and whether the client had no snapshot yet). The window counts the
# grants younger than ``availability.window_minutes``; a grant younger than
# ``availability.reservation_minutes`` is that client's reservation: its SSH transfer is
# not refused for load, and asking again returns 200 without taking another place.
# Everything happens under one flock, so concurrent requests (threads or processes)
# never admit more than the window allows.
#
# Two bounds keep the window from being taken over by devices that registered themselves
# (registration is open by default) and ask again every window:
#
# * one source address holds at most ``availability.max_per_address`` grants younger
#   than the longer of the window and the reservation (0: no bound). A loopback address
#   is a local reverse proxy, not a device, and is not bounded; neither is an unknown
#   ("") address. The web layer passes the device's own address.
# * clients without a snapshot yet take at most ``availability.new_per_window`` places of
#   a window; the rest stay for clients with history (a ``latest`` snapshot).


@record(frozen=True)
class Verdict:
    granted: bool
    reason: str = ""          # load | blocks | inodes | window | address | new | maintenance
    retry_after: int = 0


def _grants(store: Store) -> dict[str, float]:
    base = admissions_dir(store)
    out: dict[str, float] = {}
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return out
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            out[n] = os.stat(os.path.join(base, n)).st_mtime
    return out


def bounded_address(address: str) -> str:
    """The address a per-address bound applies to: IPv4-mapped IPv6 as IPv4; ``""`` for
    an unknown or loopback address (a local reverse proxy, not a device)."""
    import ipaddress  # here: only the HTTP grant path bounds addresses

    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return address.strip()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return "" if ip.is_loopback else str(ip)


def has_history(store: Store, serial: str) -> bool:
    """At least one snapshot: some volume has a ``latest`` (one readlink per volume)."""
    return any(store.latest_id(serial, volume) for volume in store.volumes(serial))


def has_reservation(ctx: Context, serial: str, now: float) -> bool:
    try:
        granted = os.stat(os.path.join(admissions_dir(ctx.store), serial)).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return False
    return now - granted < ctx.settings.availability.reservation_minutes * 60


def _retry(oldest: float, span: float, now: float) -> int:
    """Seconds until the grant made at ``oldest`` stops counting over ``span``."""
    return max(1, int(oldest + span - now) + 1)


def availability(ctx: Context, serial: str, now: float, address: str = "",
                 memory: Memory | None = None) -> Verdict:
    """Decide a ds-backup availability request for a known, enabled ``serial`` asking
    from ``address`` (the device's IP address; "" when unknown). ``memory``: what this
    process remembers of the grant files (``window``); the decision is the same."""
    from xsbackup.locking import FileLock

    store = ctx.store
    known = memory.grants if memory is not None else Memory().grants
    cfg = ctx.settings.availability
    window = cfg.window_minutes * 60
    if maintenance_on(ctx):
        return Verdict(False, "maintenance", 300)
    if has_reservation(ctx, serial, now):
        return Verdict(True)  # the common repeat: one stat, no lock
    with FileLock(store.locks_dir / "admissions.lock").acquire(wait=True):
        if has_reservation(ctx, serial, now):
            return Verdict(True)
        try:
            check_server(ctx)
        except Maintenance:
            return Verdict(False, "maintenance", 300)
        except LoadTooHigh:
            return Verdict(False, "load", 60)
        except DiskFull:
            return Verdict(False, "blocks", 600)
        except InodesFull:
            return Verdict(False, "inodes", 600)
        held = max(window, cfg.reservation_minutes * 60)
        recent = [g for g in known.all(store).values() if g.time > now - held]
        live = sorted(g.time for g in recent if now - g.time < window)
        if len(live) >= cfg.window_count:
            return Verdict(False, "window", _retry(live[0], window, now) if live
                           else max(1, int(window)))
        source = bounded_address(address)
        if source and cfg.max_per_address:
            mine = sorted(g.time for g in recent if g.address == source)
            if len(mine) >= cfg.max_per_address:
                return Verdict(False, "address", _retry(mine[0], held, now))
        new = not has_history(store, serial)
        if new:
            newcomers = sorted(g.time for g in recent if g.new and now - g.time < window)
            if len(newcomers) >= cfg.new_per_window:
                return Verdict(False, "new", _retry(newcomers[0], window, now))
        _write_grant(store, serial, {"address": source, "new": new}, now)
        return Verdict(True)


def _write_grant(store: Store, serial: str, facts: dict[str, Any], now: float) -> None:
    """``admissions/<SN>``, stamped ``now``: always a new file renamed into place, so a
    process that remembers the old one (``window.Grants``) sees that it changed."""
    base = admissions_dir(store)
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, serial)
    tmp = os.path.join(base, f".{serial}.{os.getpid()}.tmp")
    import orjson  # here: the forced command never grants

    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, orjson.dumps(facts))
    finally:
        os.close(fd)
    os.utime(tmp, (now, now))
    os.rename(tmp, path)


def expire_grants(ctx: Context, now: float) -> int:
    """Remove grants older than both the window and the reservation (scheduler job)."""
    store = ctx.store
    keep = max(ctx.settings.availability.window_minutes,
               ctx.settings.availability.reservation_minutes) * 60
    removed = 0
    for name, t in _grants(store).items():
        if now - t >= keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(admissions_dir(store), name))
                removed += 1
    return removed
