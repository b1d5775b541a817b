"""Stored modes no one but the service account may write, with the client's modes intact.

rsync's ``--fake-super`` receiver gives a stored item the client's permission bits (plus
owner read and write), and records the client's attributes in the ``user.rsync.%stat``
xattr only where the stored ones differ. So a client's 0666 file is stored 0666, and a
symlink, stored as a regular file holding its target, is 0777. ``--chmod`` cannot help:
on the receiver it rewrites the client's mode before rsync records it (``--chmod=go-w``
stores a 0666 file as 0644 with no record, and a restore then returns 0644), and it
never applies to symlinks.

``tighten`` therefore takes group and world write away from one stored item itself,
after writing the record rsync would have written for the client's mode. The record
comes first: whoever reads the item in between (a restore, or rsync comparing a
``--link-dest`` base) sees the client's attributes either way, so restores stay exact
and unchanged files still hardlink to the tightened ones.
"""

from __future__ import annotations

import errno
import os
import stat

# rsync's record of the client's attributes: "<octal mode> <major>,<minor> <uid>:<gid>".
# ``restore.access`` is its reader.
STAT_XATTR = "user.rsync.%stat"
LOOSE = 0o022  # group and world write


def tighten(path: str, st: os.stat_result, loose: int = LOOSE) -> bool:
    """Take group and world write (the bits ``loose``) away from the stored item ``path``
    whose ``lstat`` is ``st``, keeping its client mode in rsync's record. Returns whether
    it changed."""
    mode = stat.S_IMODE(st.st_mode)
    if not mode & loose or stat.S_ISLNK(st.st_mode):
        return False
    try:
        os.getxattr(path, STAT_XATTR, follow_symlinks=False)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
        # No record: the stored attributes are the client's. Write the record rsync
        # would write for them before the stored mode stops saying so.
        record = f"{st.st_mode:o} 0,0 {st.st_uid}:{st.st_gid}"
        os.setxattr(path, STAT_XATTR, record.encode(), follow_symlinks=False)
    os.chmod(path, mode & ~loose)
    return True


def tighten_tree(top: str) -> int:
    """``tighten`` ``top`` and everything below it (never following a link, never leaving
    its filesystem). Returns the items changed."""
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return 0
    changed = int(tighten(top, st))
    stack = [(top, st.st_dev)] if stat.S_ISDIR(st.st_mode) else []
    while stack:
        d, dev = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                est = e.stat(follow_symlinks=False)
                changed += tighten(e.path, est)
                if stat.S_ISDIR(est.st_mode) and est.st_dev == dev:
                    stack.append((e.path, dev))
    return changed
