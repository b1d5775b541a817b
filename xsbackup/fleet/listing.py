"""Where a client is in a fleet, and what it holds there: ``fleet move-client``'s listing.

``find_source`` asks every server for its status and, in the same session, the client's
snapshots and waiting transfers (``find_command``'s lines, read by ``listed``).
"""

from __future__ import annotations

from typing import Any

from xsbackup.errors import ClientNotFound, MoveFailed
from xsbackup.fleet import ops
from xsbackup.fleet.inventory import FleetServer, Inventory
from xsbackup.fleet.remote import ROOT, XSBACKUP, run_all
from xsbackup.store import SNAPSHOT_RE, VOLUME_RE, snapshot_sort_key


def find_command(volumes: str) -> str:
    """A source command: the snapshots and waiting transfers in ``volumes`` (a client's
    ``volumes`` directory, quoted), one ``./V/snapshots/ID`` or ``./V/incoming/ID`` a
    line (nothing when the client has no volumes there)."""
    return (f"test -d {volumes} || exit 0; cd {volumes} && find . -mindepth 3 -maxdepth 3 "
            "-type d \\( -path './*/snapshots/*' -o -path './*/incoming/*' \\) -print")


def listed(out: str) -> tuple[dict[str, list[str]], list[str]]:
    """``find_command``'s lines: the snapshots per volume (oldest first) and the waiting
    transfers (``V/ID``)."""
    snaps: dict[str, list[str]] = {}
    waiting = []
    for line in out.splitlines():
        parts = line.split("/")
        if len(parts) != 4 or not VOLUME_RE.fullmatch(parts[1]):
            continue
        if not SNAPSHOT_RE.fullmatch(parts[3]):
            continue
        if parts[2] == "snapshots":
            snaps.setdefault(parts[1], []).append(parts[3])
        else:
            waiting.append(f"{parts[1]}/{parts[3]}")
    return {v: sorted(ids, key=snapshot_sort_key) for v, ids in snaps.items()}, waiting


_LISTING = "# xsbackup-fleet: listing"


def _status_and_listing(text: str) -> tuple[dict[str, Any], str]:
    head, mark, tail = text.partition(f"\n{_LISTING}\n")
    if not mark:
        raise ValueError("no listing")
    return ops.status_answer(head), tail


def find_source(inv: Inventory, serial: str, timeout: float
                ) -> tuple[FleetServer, dict[str, list[str]]]:
    """The one server the client is registered on (every server must answer), and its
    snapshots there (``Move.listing``, in the same session as its status)."""
    volumes = f"{ROOT}/clients/{serial}/volumes"
    answers = run_all(inv.servers, f"{XSBACKUP} status --json && printf '%s\\n' "
                      f"'{_LISTING}' && ({find_command(volumes)})", timeout=timeout,
                      parse=_status_and_listing)
    failed = [f"{a.server.name} ({a.error})" for a in answers if not a.ok]
    if failed:
        raise MoveFailed(f"cannot tell where {serial} is registered: {', '.join(failed)} "
                         "did not answer")
    on = sorted((a.server.name, a.data[1]) for a in answers
                if any(c.get("serial") == serial for c in a.data[0]["clients"]))
    if not on:
        raise ClientNotFound(f"client {serial} is registered on no fleet server")
    if len(on) > 1:
        raise MoveFailed(f"client {serial} is registered on {', '.join(n for n, _ in on)}; "
                         "remove all but one first")
    return inv.get(on[0][0]), listed(on[0][1])[0]
