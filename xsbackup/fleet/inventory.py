"""The fleet inventory: a TOML file with one ``[[server]]`` table per xsbackup server.

Keys of a table: ``name`` (required, unique), ``host`` (``user@address`` or ``address``,
required), ``port`` (22), ``root`` (the state root there, an absolute path, required),
``identity`` (a private key path, optional), ``command`` (the ``xsbackup`` executable
there, default ``xsbackup``), ``weight`` (placement weight above zero, 1) and ``site``
(optional label). Everything is checked at load; a bad value is an ``InventoryError``
naming the file, the server and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xsbackup.clients import placement
from xsbackup.errors import InventoryError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
_ADDRESS_RE = re.compile(r"[A-Za-z0-9._:-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")
_KEYS = ("name", "host", "port", "root", "identity", "command", "weight", "site")


@dataclass(frozen=True)
class FleetServer:
    """One xsbackup server of the fleet, as the inventory describes it."""

    name: str
    address: str
    user: str | None
    port: int
    root: str
    identity: str | None
    command: str
    weight: float
    site: str

    @property
    def host(self) -> str:
        return f"{self.user}@{self.address}" if self.user else self.address


@dataclass(frozen=True)
class Inventory:
    path: Path
    servers: tuple[FleetServer, ...]

    def get(self, name: str) -> FleetServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise InventoryError(f"{self.path}: no server named {name!r} "
                             f"(servers: {', '.join(s.name for s in self.servers)})")

    def assign(self, serial: str) -> FleetServer:
        """The server rendezvous hashing places ``serial`` on."""
        return self.get(placement.assign(serial, members(self.servers)))


def members(servers: Iterable[FleetServer]) -> list[tuple[str, float]]:
    return [(s.name, s.weight) for s in servers]


def _text(where: str, table: dict[str, Any], key: str, default: str | None) -> str | None:
    value = table.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value or "\n" in value:
        raise InventoryError(f"{where}: {key}: expected a non-empty one-line string, "
                             f"got {value!r}")
    return value


def _server(where: str, table: dict[str, Any]) -> FleetServer:
    if "name" not in table:
        raise InventoryError(f"{where}: name: missing")
    name = _text(where, table, "name", None) or ""
    if not NAME_RE.fullmatch(name):
        raise InventoryError(f"{where}: name: must match {NAME_RE.pattern}, got {name!r}")
    where = f"{where} ({name})"
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise InventoryError(f"{where}: unknown key {unknown[0]} (keys: {', '.join(_KEYS)})")
    for key in ("host", "root"):
        if key not in table:
            raise InventoryError(f"{where}: {key}: missing")
    host = _text(where, table, "host", None) or ""
    user, _, address = host.rpartition("@")
    if (user and not _USER_RE.fullmatch(user)) or not _ADDRESS_RE.fullmatch(address):
        raise InventoryError(f"{where}: host: expected user@address, got {host!r}")
    port = table.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"{where}: port: expected an integer 1-65535, got {port!r}")
    root = _text(where, table, "root", None) or ""
    if not root.startswith("/"):
        raise InventoryError(f"{where}: root: expected an absolute path, got {root!r}")
    weight = table.get("weight", 1)
    if (isinstance(weight, bool) or not isinstance(weight, int | float)
            or not 0 < weight < float("inf")):
        raise InventoryError(f"{where}: weight: expected a number above zero, got {weight!r}")
    identity = _text(where, table, "identity", None)
    return FleetServer(name=name, address=address, user=user or None, port=port, root=root,
                       identity=os.path.expanduser(identity) if identity else None,
                       command=_text(where, table, "command", "xsbackup") or "xsbackup",
                       weight=float(weight), site=_text(where, table, "site", None) or "")


def parse(path: Path, data: dict[str, Any]) -> Inventory:
    """Validate a parsed inventory document."""
    extra = sorted(set(data) - {"server"})
    if extra:
        raise InventoryError(f"{path}: unknown key {extra[0]} (only [[server]] tables)")
    tables = data.get("server")
    if not isinstance(tables, list) or not tables:
        raise InventoryError(f"{path}: no [[server]] tables")
    servers: list[FleetServer] = []
    for i, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise InventoryError(f"{path}: server #{i}: must be a table")
        server = _server(f"{path}: server #{i}", table)
        if any(s.name == server.name for s in servers):
            raise InventoryError(f"{path}: server #{i}: name: {server.name!r} is given twice")
        servers.append(server)
    return Inventory(path, tuple(servers))


def load(path: Path) -> Inventory:
    """Read and validate the inventory file at ``path``."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InventoryError(f"inventory {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InventoryError(f"{path}: {e}") from None
    return parse(path, data)


def locate(option: str | None, configured: str, root: Path) -> Path:
    """The inventory path: ``--inventory``, else ``[fleet] inventory`` (relative to the
    state root)."""
    if option:
        return Path(os.path.abspath(option))
    if not configured:
        raise InventoryError("no fleet inventory: give --inventory FILE or set "
                             "[fleet] inventory")
    return root / configured
