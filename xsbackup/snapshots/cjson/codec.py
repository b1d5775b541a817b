"""Canonical JSON decoding and encoding: ``encode(decode(doc)) == doc``."""

from __future__ import annotations

import contextlib
import operator
import re
from collections.abc import Iterator
from itertools import islice
from typing import Any

import orjson

from xsbackup.errors import CanonicalJSONError
from xsbackup.snapshots.cjson.scanner import (
    DEFAULT_MAX_DEPTH,
    INTEGER,
    STRING,
    unescape,
    validate,
    violation_at,
)

# Every token of a canonical document; used by the decoder on validated input only.
_TOKEN = re.compile(STRING + rb"|" + INTEGER + rb"|true|false|null|[\[\]{}:,]")
# Maps every digit to "0" and every other byte to ".": a run of 19 zeros in the result is
# an integer (or digits in a string) that may not fit orjson's 64 bits, which it would
# turn into a float. translate and find run at memory speed, a regex search does not.
_DIGIT_MASK = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_LONG_DIGITS = b"0" * 19
_END = object()


# --- decoding ---------------------------------------------------------------------------


def decode(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH, *, require_utf8: bool = False) -> Any:
    """Parse canonical JSON into dicts, lists, str, int, bool and None.

    Raises CanonicalJSONError unless ``validate`` accepts ``data``. String bytes are
    decoded as UTF-8 with ``surrogateescape``, so ``encode(decode(data)) == data``.
    """
    violation = validate(data, max_depth, require_utf8=require_utf8)
    if violation is not None:
        raise CanonicalJSONError(violation)
    if _LONG_DIGITS not in data.translate(_DIGIT_MASK):
        # On canonical input orjson gives the same values, faster; it refuses raw control
        # bytes, non-UTF-8 strings and depth over 1024, which the token walk below takes.
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:  # what orjson refuses, the token walk takes
            return _build(data)
    return _build(data)


def _build(data: bytes) -> Any:
    """Build the value of ``data``, already validated, from its tokens."""
    tokens: list[bytes] = _TOKEN.findall(data)
    root: Any = None
    frames: list[Any] = []  # open containers, innermost last
    keys: list[str | None] = []  # per frame: the key waiting for its value
    for index, token in enumerate(tokens):
        first = token[0]
        if first in (0x2C, 0x3A):
            continue
        if first in (0x5D, 0x7D):
            frames.pop()
            keys.pop()
            continue
        value: Any
        if first == 0x22:
            value = unescape(token[1:-1]).decode("utf-8", "surrogateescape")
            if frames and keys[-1] is None and isinstance(frames[-1], dict):
                keys[-1] = value
                continue
        elif first == 0x7B:
            value = {}
        elif first == 0x5B:
            value = []
        elif token == b"true":
            value = True
        elif token == b"false":
            value = False
        elif token == b"null":
            value = None
        else:
            try:
                value = int(token)
            except ValueError:  # more digits than sys.get_int_max_str_digits()
                offset = sum(map(len, tokens[:index]))
                violation = violation_at(data, offset, "integer has too many digits to decode")
                raise CanonicalJSONError(violation) from None
        if not frames:
            root = value
        elif keys[-1] is None:
            frames[-1].append(value)
        else:
            frames[-1][keys[-1]] = value
            keys[-1] = None
        if first in (0x7B, 0x5B):
            frames.append(value)
            keys.append(None)
    return root


# --- encoding ---------------------------------------------------------------------------


class _Frame:
    __slots__ = ("count", "ident", "is_object", "items")

    def __init__(self, items: Iterator[Any], is_object: bool, ident: int) -> None:
        self.items = items
        self.is_object = is_object
        self.ident = ident
        self.count = 0


def encode(value: Any, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Return the canonical JSON bytes of ``value``.

    Takes dict (str keys), list, tuple, str, bytes (written raw), int, bool and None.
    Raises TypeError for floats, non-str keys and other types; ValueError for circular
    references, nesting deeper than ``max_depth`` and strings with surrogates that do
    not map back to bytes (see the module docstring).
    """
    out: list[bytes] = []
    stack: list[_Frame] = []
    active: set[int] = set()
    pending: Any = value
    while True:
        if pending is None:
            out.append(b"null")
        elif pending is True:
            out.append(b"true")
        elif pending is False:
            out.append(b"false")
        elif isinstance(pending, str):
            out.append(_quote(_utf8(pending)))
        elif isinstance(pending, int):
            out.append(b"%d" % pending)
        elif isinstance(pending, bytes | bytearray):
            out.append(_quote(bytes(pending)))
        elif isinstance(pending, float):
            raise TypeError(f"floats are not allowed in canonical JSON: {pending!r}")
        elif isinstance(pending, dict | list | tuple):
            if len(stack) >= max_depth:
                raise ValueError(f"nesting deeper than {max(max_depth, 0)} levels")
            ident = id(pending)
            if ident in active:
                raise ValueError("circular reference")
            active.add(ident)
            if isinstance(pending, dict):
                out.append(b"{")
                stack.append(_Frame(iter(_sorted_members(pending)), True, ident))
            else:
                out.append(b"[")
                stack.append(_Frame(iter(pending), False, ident))
        else:
            raise TypeError(f"cannot encode {type(pending).__name__} as canonical JSON")

        while stack:
            frame = stack[-1]
            item: Any = next(frame.items, _END)
            if item is _END:
                out.append(b"}" if frame.is_object else b"]")
                stack.pop()
                active.discard(frame.ident)
                continue
            if frame.count:
                out.append(b",")
            frame.count += 1
            if frame.is_object:
                key, pending = item
                out.append(_quote(key))
                out.append(b":")
            else:
                pending = item
            break
        else:
            return b"".join(out)


def _sorted_members(obj: dict[Any, Any]) -> list[tuple[bytes, Any]]:
    members = []
    for key, member in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"object keys must be str, not {type(key).__name__}")
        members.append((_utf8(key), member))
    members.sort(key=operator.itemgetter(0))
    for (left, _), (right, _) in zip(members, islice(members, 1, None), strict=False):
        if left == right:
            raise ValueError(f"duplicate object key {left!r}")
    return members


def _utf8(text: str) -> bytes:
    if not text.isascii():
        return _non_ascii_utf8(text)
    return text.encode("ascii")


def _non_ascii_utf8(text: str) -> bytes:
    """``_utf8`` of a string with a character past ASCII: surrogate escapes become
    their bytes when they spell no well-formed UTF-8."""
    with contextlib.suppress(UnicodeEncodeError):  # a surrogate: checked below
        return text.encode("utf-8")
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"string has a lone surrogate {text[exc.start]!r} that stands for no byte"
        ) from None
    if raw.decode("utf-8", "surrogateescape") != text:
        raise ValueError("string has surrogate-escaped bytes that spell well-formed UTF-8")
    return raw


def _quote(raw: bytes) -> bytes:
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
