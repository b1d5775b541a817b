"""Sugar Journal entries inside a ``datastore`` snapshot, and their ``.xoj`` bundles.

See ds-backup-protocol.md, "Datastore layouts" and "Journal Entry Bundle (.xoj)".
``entries`` reads entries (layouts, metadata, listing); ``bundle`` writes one as a
``.xoj`` zip and names its download. Every file is reached through ``restore.access``,
so nothing the client stored is ever followed or served as anything but what it was.
"""

from xsbackup.errors import EntryNotFound, JournalError, NotADatastore
from xsbackup.restore.access import CHUNK
from xsbackup.restore.journal.bundle import (
    NAME_MAX,
    XOJ_MIME,
    Writable,
    entry_filename,
    write_bundle,
)
from xsbackup.restore.journal.entries import (
    KEYS_MAX,
    LIST_VALUE_MAX,
    METADATA_MAX,
    UID_RE,
    VALUE_MAX,
    Entry,
    detect_layout,
    iter_entries,
    list_entries,
    read_metadata,
)

__all__ = [
    "CHUNK",
    "KEYS_MAX",
    "LIST_VALUE_MAX",
    "METADATA_MAX",
    "NAME_MAX",
    "UID_RE",
    "VALUE_MAX",
    "XOJ_MIME",
    "Entry",
    "EntryNotFound",
    "JournalError",
    "NotADatastore",
    "Writable",
    "detect_layout",
    "entry_filename",
    "iter_entries",
    "list_entries",
    "read_metadata",
    "write_bundle",
]
