"""``xsbackup config check``: the configuration, and every local thing it names, checked.

Loading the settings already validated every key (``config``); these are the checks a
value alone cannot answer: whether the state root is there and private, whether the
recorded storage backend agrees with ``storage.backend`` and works here, whether the
off-site password and credentials files are private and restic is installed, and whether
the fleet inventory loads and names this server."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from xsbackup.config import Settings
from xsbackup.errors import XsbackupError
from xsbackup.store import Store, root_warnings

Row = dict[str, Any]


def _root(settings: Settings, store: Store) -> str:
    if not store.is_initialised():
        raise XsbackupError(f"{store.root} is not an initialised state root (xsbackup init)")
    warnings = root_warnings(store.root, settings.storage.root_group)
    if warnings:
        raise XsbackupError("; ".join(warnings))
    return f"{store.root}"


def _storage(settings: Settings, store: Store) -> str:
    from xsbackup.storage import choice

    name = choice.effective(store, settings.storage.backend)
    why = choice.unusable(store.root, name)
    if why:
        raise XsbackupError(f"the {name} backend cannot work here: {why}")
    return f"{name} backend"


def _offsite(settings: Settings, store: Store) -> str:
    from xsbackup.offsite.restic import Restic

    if not settings.offsite.repository:
        return "not configured"
    restic = Restic(settings.offsite, store)
    if shutil.which(settings.offsite.restic) is None:
        raise XsbackupError(f"offsite.restic: {settings.offsite.restic!r} is not installed "
                            "(Debian package restic)")
    restic.environment()  # the password and credentials files: present and private
    return f"{restic.location} (not contacted: offsite init opens it)"


def _fleet(settings: Settings, store: Store) -> str:
    from xsbackup.fleet import inventory

    if not settings.fleet.inventory:
        if settings.fleet.place_as:
            raise XsbackupError("fleet.place_as is set but fleet.inventory is not")
        return "not configured"
    found = inventory.load(inventory.locate(None, settings.fleet.inventory, store.root))
    names = [s.name for s in found.servers]
    if settings.fleet.place_as and settings.fleet.place_as not in names:
        raise XsbackupError(f"fleet.place_as: {settings.fleet.place_as!r} is not a server "
                            f"of the inventory ({', '.join(names)})")
    return f"{len(names)} servers"


CHECKS: list[tuple[str, Callable[[Settings, Store], str]]] = [
    ("root", _root), ("storage", _storage), ("offsite", _offsite), ("fleet", _fleet)]


def run_checks(settings: Settings) -> list[Row]:
    """One row per check: ``{"check", "ok", "detail"}``; every check runs."""
    store = Store(settings.root)
    rows: list[Row] = [{"check": "keys", "ok": True,
                        "detail": f"every key valid ({settings.config_file or 'defaults'})"}]
    for name, check in CHECKS:
        try:
            rows.append({"check": name, "ok": True, "detail": check(settings, store)})
        except (XsbackupError, OSError) as e:
            detail = e.message if isinstance(e, XsbackupError) else str(e)
            rows.append({"check": name, "ok": False, "detail": detail})
    return rows
