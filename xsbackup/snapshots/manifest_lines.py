"""The lines of a content manifest (``snapshots.manifest`` owns the format): one JSON
object a line, sorted by path (code points; a byte that is not UTF-8 sorts as its
surrogate escape), and the search and splice over such sorted lines that let a manifest
be changed, or a delta manifest resolved, by parsing only the lines probed.

A record line is ``{"p": PATH, "i": INODE, "s": SIZE, "m": MTIME_NS, "d": DIGEST}`` (or
``"x": HEX`` instead of ``"p"`` for a path that is not UTF-8); a *gone* line of a delta
manifest is ``{"g": PATH}`` (or ``{"gx": HEX}``), where a path ending in ``/`` stands for
everything below that directory."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

LAST = "\U0010ffff"  # sorts after every path: what a damaged line reads as


class ManifestError(ValueError):
    """A manifest that is not one this module wrote (a line is damaged or missing)."""


class Record(NamedTuple):
    path: str     # relative to the snapshot; os.fsdecode form (surrogateescape)
    inode: int
    size: int
    mtime_ns: int
    digest: str   # hex BLAKE2b-256 of the content


_LINE = b'{"p":%b,"i":%d,"s":%d,"m":%d,"d":"%b"}'


def line(r: Record) -> bytes:
    """The record's line, without its newline (``line_of``)."""
    return line_of(*r)


def line_of(path: str, inode: int, size: int, mtime_ns: int, digest: str) -> bytes:
    """The line of a record, without its newline: ``orjson.dumps({"p": path, "i":
    inode, "s": size, "m": mtime_ns, "d": digest})``, or ``"x": HEX`` instead of ``"p"``
    for a path that is not UTF-8. A promotion writes one for every file it hashed, so
    the usual line (a hex digest, which JSON writes as it stands) is the path as orjson
    encodes it with the rest put around it by one format: the same bytes, for a
    fraction of the cost."""
    try:
        p = orjson.dumps(path)
    except orjson.JSONEncodeError:  # a name that is not UTF-8 (surrogate escapes)
        return orjson.dumps({"x": os.fsencode(path).hex(), "i": inode, "s": size,
                             "m": mtime_ns, "d": digest})
    if digest.isascii() and digest.isalnum():
        return _LINE % (p, inode, size, mtime_ns, digest.encode())
    return orjson.dumps({"p": path, "i": inode, "s": size, "m": mtime_ns, "d": digest})


def record_lines(paths: Sequence[str], inodes: Sequence[int], sizes: Sequence[int],
                 mtimes: Sequence[int], digests: Sequence[str]) -> list[bytes]:
    """``line_of`` of each file, each with its newline, for digests as ``hexdigest``
    gives them (a promotion's freshly hashed files): one loop, no call a line."""
    out = []
    fmt, dumps = _LINE + b"\n", orjson.dumps
    for p, i, s, m, d in zip(paths, inodes, sizes, mtimes, digests, strict=True):
        try:
            out.append(fmt % (dumps(p), i, s, m, d.encode()))
        except orjson.JSONEncodeError:  # a name that is not UTF-8
            out.append(line_of(p, i, s, m, d) + b"\n")
    return out


def gone_line(path: str) -> bytes:
    """The line saying ``path`` (a directory: ``path`` ends in ``/``) is gone."""
    try:
        return orjson.dumps({"g": path})
    except orjson.JSONEncodeError:
        return orjson.dumps({"gx": os.fsencode(path).hex()})


def load(raw: bytes, lineno: int) -> dict[str, Any]:
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ManifestError(f"line {lineno} is not JSON") from None
    if not isinstance(row, dict):
        raise ManifestError(f"line {lineno} is not a JSON object")
    return row


def record(row: dict[str, Any], lineno: int) -> Record:
    try:
        path = row["p"] if "p" in row else os.fsdecode(bytes.fromhex(row["x"]))
        return Record(path, int(row["i"]), int(row["s"]), int(row["m"]), str(row["d"]))
    except (KeyError, ValueError, TypeError):
        raise ManifestError(f"line {lineno} is not a manifest record") from None


def gone_path(row: dict[str, Any], lineno: int) -> str:
    try:
        return str(row["g"]) if "g" in row else os.fsdecode(bytes.fromhex(row["gx"]))
    except (KeyError, ValueError, TypeError):
        raise ManifestError(f"line {lineno} is not a gone path") from None


def record_at(data: bytes, at: int) -> Record | None:
    """The record whose line starts at ``at``; None past the end or for a damaged line."""
    if at >= len(data):
        return None
    end = data.index(b"\n", at)
    try:
        return record(load(data[at:end], 0), 0)
    except ManifestError:
        return None


def path_at(data: bytes, at: int) -> str:
    """The path of the line (a record or a gone path) that starts at ``at``; ``LAST``
    for a damaged line (a caller's count check then fails)."""
    return line_path(data[at:data.index(b"\n", at)])


def line_path(raw: bytes) -> str:
    """The path of a record or gone line (without its newline); ``LAST`` if damaged. A
    path without escapes is cut out of the line as it stands (a ``"`` in a path is
    escaped, so the first ``","i":`` after ``{"p":"`` ends it); any other line is
    parsed."""
    if raw.startswith(b'{"p":"'):
        stop = raw.find(b'","i":', 6)
        if stop > 0 and raw.find(b"\\", 6, stop) < 0:
            try:
                return raw[6:stop].decode()
            except UnicodeDecodeError:
                return LAST
    try:
        row = load(raw, 0)
        return record(row, 0).path if "d" in row else gone_path(row, 0)
    except ManifestError:
        return LAST


def _line_start(data: bytes, lo: int, pos: int) -> int:
    """The start of the line holding byte ``pos``, at least ``lo`` (a line start)."""
    return max(lo, data.rfind(b"\n", lo, pos) + 1)


def seek(data: bytes, key: str, lo: int) -> int:
    """The offset of the first line at or after ``lo`` (a line start) whose path is
    ``key`` or sorts after it (``len(data)`` if none): a galloping then binary search
    over the sorted lines, parsing only the lines it probes."""
    n = len(data)
    if lo >= n or path_at(data, lo) >= key:
        return lo
    hi, step = n, 1024  # the line at lo sorts before key; the answer is in (lo, hi]
    while lo + step < n:
        s = _line_start(data, lo, lo + step)
        if s > lo:
            if path_at(data, s) >= key:
                hi = s
                break
            lo = s
        step *= 2
    while True:
        nxt = data.index(b"\n", lo) + 1
        if nxt >= hi:
            return hi
        s = _line_start(data, nxt, (nxt + hi) // 2)
        if path_at(data, s) >= key:
            hi = s
        else:
            lo = s


def splice(data: bytes, lo: int, remove: Iterable[str],
           insert: list[tuple[str, bytes]]) -> tuple[list[bytes], int]:
    """``data[lo:]`` (sorted lines, each ending in ``\\n``) with the lines of the paths
    ``remove`` cut out (a path ending in ``/``: every line below it) and ``insert``'s
    lines (``(path, line with its newline)``) put in their sorted places, as pieces to
    join; and how many lines were cut. Only the lines the searches probe are parsed."""
    cuts = list(remove)
    at: dict[str, int] = {}
    for g in cuts:
        at[g] = 0
        if g.endswith("/"):
            at[g[:-1] + "0"] = 0  # "0" follows "/": the end of what was below g
    for p, _ in insert:
        at[p] = 0
    pos = lo
    for k in sorted(at):  # sorted keys: each search starts where the last one ended
        pos = at[k] = seek(data, k, pos)
    ranges = []
    for g in cuts:
        s = at[g]
        if g.endswith("/"):
            e = at[g[:-1] + "0"]
        elif s < len(data) and path_at(data, s) == g:
            e = data.index(b"\n", s) + 1
        else:
            continue
        if e > s:
            ranges.append((s, e))
    ranges.sort()
    merged: list[list[int]] = []
    for s, e in ranges:
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    adds = sorted((at[p], p, raw) for p, raw in insert)
    out: list[bytes] = []
    cur, cut, i = lo, 0, 0
    for s, e in merged:
        while i < len(adds) and adds[i][0] < s:
            out += (data[cur:adds[i][0]], adds[i][2])
            cur = adds[i][0]
            i += 1
        out.append(data[cur:s])
        cut += data.count(b"\n", s, e)
        cur = e
        while i < len(adds) and adds[i][0] <= e:  # within the cut: its place is here
            out.append(adds[i][2])
            i += 1
    for w, _, raw in adds[i:]:
        out += (data[cur:w], raw)
        cur = w
    out.append(data[cur:])
    return out, cut
