"""Storage backends: the one place that knows how a snapshot is made, promoted, deleted
and measured (``base.Backend``). ``open_backend`` picks one by name; ``Context.storage``
is the usual way in, and gives the backend recorded in the state root (``choice``)."""

from __future__ import annotations

from xsbackup.config import STORAGE_BACKENDS
from xsbackup.errors import ConfigError
from xsbackup.storage.base import Backend
from xsbackup.store import Store


def open_backend(name: str, store: Store) -> Backend:
    """The backend called ``name`` (a ``storage.backend`` choice) for ``store``."""
    if name == "hardlink":
        from xsbackup.storage.hardlink import HardlinkBackend

        return HardlinkBackend(store)
    if name == "btrfs":
        from xsbackup.storage.btrfs import BtrfsBackend

        return BtrfsBackend(store)
    if name == "reflink":
        from xsbackup.storage.reflink import ReflinkBackend

        return ReflinkBackend(store)
    raise ConfigError(f"storage.backend: must be one of {', '.join(STORAGE_BACKENDS)}, "
                      f"got {name!r}")
