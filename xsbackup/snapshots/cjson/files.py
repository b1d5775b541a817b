"""Canonical JSON verdicts: ``classify`` bytes, ``check_file`` a stored file."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import orjson

from xsbackup.snapshots.cjson.scanner import validate

# --- classification and files -----------------------------------------------------------


def classify(data: bytes) -> str:
    """ "canonical", "noncanonical" (JSON per orjson, not canonical) or "invalid"."""
    if validate(data) is None:
        return "canonical"
    return _status_of_noncanonical(data)


def _status_of_noncanonical(data: bytes) -> str:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return "invalid"
    return "noncanonical"


def check_file(
    path: str | os.PathLike[str], max_bytes: int, *, require_utf8: bool = False
) -> dict[str, Any]:
    """Check one file; return a report dict with the keys path, status, offset, line,
    column and reason.

    status is "canonical", "noncanonical" or "invalid" (as ``classify``, with the first
    violation's offset, line, column and reason), or, without reading the content:
    "symlink" (the last component is a symbolic link, not followed: O_NOFOLLOW),
    "too-large" (over ``max_bytes``) or "not-regular" (a directory, FIFO, device...).
    Other OSErrors (missing, unreadable) propagate.
    """
    name = os.fspath(path)
    report: dict[str, Any] = {
        "path": name,
        "status": "canonical",
        "offset": None,
        "line": None,
        "column": None,
        "reason": None,
    }
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(name):
            report.update(status="symlink", reason="is a symbolic link (not followed)")
            return report
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            report.update(status="not-regular", reason="not a regular file")
            return report
        if info.st_size > max_bytes:
            report.update(status="too-large", reason=_too_large(info.st_size, max_bytes))
            return report
        chunks = []
        remaining = max_bytes + 1  # one byte more shows a file that grew past the limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        report.update(status="too-large", reason=_too_large(len(data), max_bytes))
        return report
    violation = validate(data, require_utf8=require_utf8)
    if violation is not None:
        report.update(
            status=_status_of_noncanonical(data),
            offset=violation.offset,
            line=violation.line,
            column=violation.column,
            reason=violation.reason,
        )
    return report


def _too_large(size: int, max_bytes: int) -> str:
    return f"{size} bytes, over the limit of {max_bytes}"
