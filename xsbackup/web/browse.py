"""Browsing a snapshot in the web UI: directory pages, the Sugar Journal view and preview
thumbnails (downloads are ``restore.downloads``', shared with the JSON API).

Every path is opened below the snapshot's directory descriptor with ``O_NOFOLLOW``
(``access.open_dir`` / ``open_file``); a real symlink is never followed, a symlink the
client recorded (a regular file marked by fake-super) is shown with its target as text and
never entered, and ``..``, absolute paths and NUL bytes are refused before anything is
opened. A snapshot being read holds its shared flock, so prune skips it meanwhile.

Names are kept as ``str`` with surrogate escapes, so a name that is not UTF-8 round-trips
through a link's ``?path=`` exactly (``quote_path`` / ``base.parse_query``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from typing import Any
from urllib.parse import quote

from xsbackup.context import Context
from xsbackup.errors import InvalidName, PathNotFound, PathRefused
from xsbackup.restore import access, journal, resolve
from xsbackup.restore.downloads import check_snapshot, open_datastore, shown
from xsbackup.store import Store

PAGE_SIZE = 100
JOURNAL_PAGE = 50
PREVIEW_MAX = 1 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- names and paths -------------------------------------------------------------------


def quote_path(path: str) -> str:
    return quote(path.encode("utf-8", "surrogateescape"), safe="/")


# ---- directory pages -------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    name: str        # as stored (surrogate-escaped)
    label: str       # as shown
    path: str        # relative to the snapshot
    kind: str        # dir | file | symlink | special
    size: int | None
    mtime: float
    target: str = ""  # a symlink's target, as shown (never followed)

    @property
    def quoted(self) -> str:
        return quote_path(self.path)


def _entry(dir_fd: int, name: str, prefix: str) -> Entry | None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    path = f"{prefix}{name}"
    if stat.S_ISDIR(st.st_mode):
        return Entry(name, shown(name), path, "dir", None, st.st_mtime)
    if stat.S_ISLNK(st.st_mode):  # cannot come from fake-super; shown, never followed
        target = os.readlink(name, dir_fd=dir_fd)
        return Entry(name, shown(name), path, "symlink", None, st.st_mtime, shown(target))
    if not stat.S_ISREG(st.st_mode):
        return Entry(name, shown(name), path, "special", None, st.st_mtime)
    try:
        fd = os.open(name, access.O_FILE, dir_fd=dir_fd)
    except OSError:
        return Entry(name, shown(name), path, "special", None, st.st_mtime)
    try:
        mode = access.fake_stat(fd, st).mode
        if stat.S_ISLNK(mode):
            target = os.read(fd, 4096).decode("utf-8", "surrogateescape")
            return Entry(name, shown(name), path, "symlink", None, st.st_mtime, shown(target))
    finally:
        os.close(fd)
    if stat.S_ISREG(mode):
        return Entry(name, shown(name), path, "file", st.st_size, st.st_mtime)
    return Entry(name, shown(name), path, "special", None, st.st_mtime)


def list_dir(snap_fd: int, path: str, page: int,
             size: int = PAGE_SIZE) -> tuple[list[Entry], int, bool]:
    """One page of the directory ``path``: (entries, total, is a Sugar datastore).
    Directories first, then by name; only the page's entries are examined."""
    parts = access.split_path(path)
    fd = access.open_dir(snap_fd, parts)
    try:
        with os.scandir(fd) as it:
            names = [(not e.is_dir(follow_symlinks=False), e.name.casefold(), e.name)
                     for e in it]
        names.sort()
        prefix = "/".join(parts) + "/" if parts else ""
        chosen = names[page * size:(page + 1) * size]
        entries = [e for _, _, n in chosen if (e := _entry(fd, n, prefix)) is not None]
        is_datastore = journal.detect_layout(fd) is not None
    finally:
        os.close(fd)
    return entries, len(names), is_datastore


def crumbs(path: str) -> list[dict[str, str]]:
    parts = access.split_path(path)
    return [{"label": shown(p), "path": quote_path("/".join(parts[:i + 1]))}
            for i, p in enumerate(parts)]


def browse(store: Store, serial: str, volume: str, sid: str, path: str,
           page: int) -> dict[str, Any]:
    check_snapshot(store, serial, volume, sid)
    with access.OpenSnapshot(store, serial, volume, sid) as snap:
        entries, total, is_datastore = list_dir(snap.fd, path, page)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    if page >= pages and total:
        raise PathNotFound(f"no page {page + 1}: this directory has {pages}")
    return {"entries": entries, "total": total, "page": page, "pages": pages,
            "path": path, "path_label": shown(path) or "/",
            "path_quoted": quote_path(path), "crumbs": crumbs(path),
            "is_datastore": is_datastore, "ids": resolve.snapshot_ids(store, serial, volume)}


# ---- the Journal -----------------------------------------------------------------------


def journal_page(store: Store, serial: str, volume: str, sid: str, path: str, page: int,
                 query: str) -> dict[str, Any]:
    check_snapshot(store, serial, volume, sid)
    needle = query.strip().casefold()
    with access.OpenSnapshot(store, serial, volume, sid) as snap:
        fd = open_datastore(snap.fd, path)
        try:
            with contextlib.closing(journal.iter_entries(fd)) as found:
                entries = [e for e in found if not needle or any(
                    needle in v.casefold() for v in (e.title, e.activity, e.uid) if v)]
        except journal.JournalError as err:
            raise PathNotFound(str(err) or "not a Sugar datastore") from None
        finally:
            os.close(fd)
    # Newest first, as Sugar's Journal shows them (an entry without a date last).
    entries.sort(key=lambda e: (e.timestamp is not None, e.timestamp or 0, e.mtime or "",
                                e.uid), reverse=True)
    total = len(entries)
    more = (page + 1) * JOURNAL_PAGE < total
    rows = []
    for e in entries[page * JOURNAL_PAGE:(page + 1) * JOURNAL_PAGE]:
        activity = e.activity or ""
        rows.append({"uid": e.uid, "title": e.title or "", "activity": activity,
                     "activity_short": activity.rsplit(".", 1)[-1] if activity else "",
                     "when": e.timestamp if e.timestamp is not None else e.mtime,
                     "size": e.size, "has_preview": e.has_preview,
                     "mime_type": e.mime_type or ""})
    return {"entries": rows, "page": page, "more": more, "total": total, "query": query,
            "pages": max(1, (total + JOURNAL_PAGE - 1) // JOURNAL_PAGE), "path": path,
            "path_quoted": quote_path(path), "path_label": shown(path) or "/"}


def preview(store: Store, serial: str, volume: str, sid: str, path: str,
            uid: str) -> bytes:
    """An entry's preview thumbnail, only if it is a PNG (what Sugar writes)."""
    check_snapshot(store, serial, volume, sid)
    if not journal.UID_RE.fullmatch(uid):
        raise InvalidName(f"invalid Journal entry uid {uid[:80]!r}")
    with access.OpenSnapshot(store, serial, volume, sid) as snap:
        root = open_datastore(snap.fd, path)
        try:
            layout = journal.detect_layout(root)
            rel = (f"store/preview/{uid}" if layout == 0 else
                   f"{uid[:2]}/{uid}/metadata/preview")
            fd, st, _ = access.open_file(root, rel)
        finally:
            os.close(root)
        try:
            if st.st_size > PREVIEW_MAX:
                raise PathRefused("the preview is too large to show")
            data = os.read(fd, PREVIEW_MAX + 1)
        finally:
            os.close(fd)
    if not data.startswith(PNG_MAGIC):
        raise PathNotFound("this entry has no PNG preview")
    return data


def changes(ctx: Context, serial: str, volume: str, sid: str,
            since: str | None) -> dict[str, Any]:
    """The ``changes`` page: ``integrity.diff`` from ``since`` (default: the snapshot
    before ``sid``) to ``sid``, names shown as ``shown`` prints them."""
    from xsbackup.integrity import diff

    check_snapshot(ctx.store, serial, volume, sid)
    ids = resolve.snapshot_ids(ctx.store, serial, volume)
    older = ids[:ids.index(sid)]
    if not since and not older:
        return {"since": None, "ids": ids, "rows": [], "summary": {}}
    _, a, _, found = diff.diff(ctx, serial, since or older[-1], sid, volume)
    rows = [{**c.as_dict(), "label": shown(c.path)} for c in found]
    return {"since": a, "ids": ids, "rows": rows, "summary": diff.summary(found)}
