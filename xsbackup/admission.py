"""Admission: may this client transfer now? (DESIGN.md section 3.2)

Each refusal is its own error class with its own exit code and a one-line reason. The
checks are cheap (one ``getloadavg``, one ``statvfs``, a couple of ``stat`` calls) because
they run on every connection. The stdlib calls are what psutil would make here anyway,
so the forced command does not pay psutil's import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import Settings
from .errors import (
    ClientDisabled,
    DiskFull,
    InodesFull,
    LoadTooHigh,
    Maintenance,
    UnknownClient,
)
from .registry import Client, Registry
from .store import Store


@dataclass(frozen=True)
class DiskUse:
    blocks_pct: float
    inodes_pct: float
    free_bytes: int


def disk_use(path: os.PathLike[str] | str) -> DiskUse:
    st = os.statvfs(path)
    blocks = st.f_blocks or 1
    used_blocks = st.f_blocks - st.f_bfree
    # Like df: the share of the blocks an unprivileged user may use.
    usable = used_blocks + st.f_bavail or 1
    inodes_used = st.f_files - st.f_ffree
    return DiskUse(
        blocks_pct=100.0 * used_blocks / usable if usable else 100.0 * used_blocks / blocks,
        inodes_pct=100.0 * inodes_used / st.f_files if st.f_files else 0.0,
        free_bytes=st.f_bavail * st.f_frsize,
    )


def maintenance_on(settings: Settings, store: Store) -> bool:
    return bool(settings["admission.maintenance"]) or store.maintenance_flag.exists()


def check_client(registry: Registry, serial: str) -> Client:
    if not registry.exists(serial):
        raise UnknownClient(f"unknown client {serial}")
    client = registry.get(serial)
    if client.disabled:
        raise ClientDisabled(f"client {serial} is disabled")
    return client


def check_server(settings: Settings, store: Store) -> None:
    """Maintenance, load and disk checks, in that order."""
    if maintenance_on(settings, store):
        raise Maintenance("server is in maintenance mode; try again later")
    load1 = os.getloadavg()[0]
    limit = float(settings["admission.max_load"])
    if load1 > limit or (limit == 0 and load1 >= 0):
        raise LoadTooHigh(f"server busy: load average {load1:.2f} is over the limit {limit:g}")
    use = disk_use(store.root)
    if use.blocks_pct > float(settings["admission.max_blocks_pct"]):
        raise DiskFull(
            f"server disk full: {use.blocks_pct:.1f}% of blocks used "
            f"(limit {settings['admission.max_blocks_pct']:g}%)"
        )
    if use.inodes_pct > float(settings["admission.max_inodes_pct"]):
        raise InodesFull(
            f"server out of inodes: {use.inodes_pct:.1f}% used "
            f"(limit {settings['admission.max_inodes_pct']:g}%)"
        )
