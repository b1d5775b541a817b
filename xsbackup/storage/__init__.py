"""Storage backends: the one place that knows how a snapshot is made, promoted, deleted
and measured (``base.Backend``). ``open_backend`` picks one by ``storage.backend``;
``Context.storage`` is the usual way in. Only ``hardlink`` exists today."""

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
    raise ConfigError(f"storage.backend: must be one of {', '.join(STORAGE_BACKENDS)}, "
                      f"got {name!r}")
