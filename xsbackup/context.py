"""The process's context: validated settings, the state root's layout and the registry.

A ``Context`` is built once per process (by the CLI's decorator, the forced command, or
``serve``) and passed down; core functions take it instead of rebuilding ``Store(...)`` and
``Registry(...)`` or re-reading the configuration. ``serve`` swaps in a new one on SIGHUP;
its threads hold a ``Callable[[], Context]`` and call it for each unit of work, so a reload
reaches every one of them.
"""

from __future__ import annotations

from xsbackup.clients.registry import Registry
from xsbackup.config import Settings
from xsbackup.records import record
from xsbackup.store import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from xsbackup.storage.base import Backend


@record(frozen=True)
class Context:
    settings: Settings
    store: Store
    registry: Registry

    @classmethod
    def open(cls, settings: Settings, *, require: bool = True) -> Context:
        """The context of ``settings``' state root (``require``: it must be initialised)."""
        store = Store(settings.root)
        if require:
            store.require()
        return cls(settings, store, Registry(store))

    @property
    def storage(self) -> Backend:
        """The storage backend recorded in this state root (``storage.choice``), checked
        against ``storage.backend``. (Imported here: a command that reads no snapshot
        data through the backend, such as ``diff``, does not pay for it.)"""
        from xsbackup.storage import open_backend
        from xsbackup.storage.choice import effective

        return open_backend(effective(self.store, self.settings.storage.backend), self.store)
