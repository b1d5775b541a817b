"""OLPC Canonical JSON: a validator, a decoder and an encoder.

Canonical JSON (wiki.laptop.org, "Canonical JSON") gives every value exactly one byte
string, so that a hash or a signature over it is repeatable. The grammar is json.org's,
narrowed:

* no whitespace outside strings, before, between or after tokens (so no trailing newline);
* object keys in strictly increasing byte order, which also forbids duplicate keys;
* integers only, written ``0`` or ``-?[1-9][0-9]*``: no fraction, no exponent, no leading
  zeros and no ``-0``;
* strings are uninterpreted bytes with exactly two escapes, ``\\"`` and ``\\\\``, both
  mandatory; every other byte (control bytes, NUL, non-ASCII) appears raw, so ``\\n``,
  ``\\/`` and ``\\u00e9`` are invalid escapes;
* ``true``, ``false`` and ``null``; no trailing commas; exactly one top-level value, which
  may be any value (not only an object or an array).

Decisions this module takes where the specification is silent:

* **Key order** compares the *unescaped* bytes of the keys (the key's value, as an encoder
  that sorts its keys before escaping them writes it). It differs from comparing the
  escaped text only for keys containing ``"`` or ``\\``. Comparing UTF-8 bytes is the
  same as comparing code points for well-formed text, and differs from UTF-16 order
  (JavaScript's, Java's) for characters above U+FFFF against U+E000..U+FFFF.
* **Non-UTF-8 bytes inside strings are valid.** The specification says strings are raw
  bytes, so ``validate`` accepts them unless ``require_utf8=True`` is passed, which makes
  the first ill-formed byte a violation ("string is not valid UTF-8"). ``decode`` turns
  string bytes into ``str`` with the ``surrogateescape`` error handler, so a byte that is
  not part of well-formed UTF-8 becomes a lone surrogate U+DC80..U+DCFF, and ``encode``
  maps those back to the same bytes: ``encode(decode(doc)) == doc`` for every canonical
  ``doc``. ``encode`` refuses (``ValueError``) a ``str`` whose escape surrogates would
  spell well-formed UTF-8 (they would decode to different text) and any other lone
  surrogate. ``encode`` also takes ``bytes`` values and writes them raw.
* **Depth**: more than ``max_depth`` nested containers (512 by default) is a violation
  reported at the bracket that goes over; everything here is iterative, so no
  ``RecursionError`` whatever the input.
* **Offsets** of violations: a token that is wrong as a whole (a number, a literal, a key
  out of order or duplicated, a bracket nested too deep) is reported at its first byte;
  anything else at the offending byte itself (a whitespace byte, the backslash of an
  invalid escape, the ill-formed UTF-8 byte); a document that stops too early at its
  length.
* **classify** says "canonical" for every document ``validate`` accepts, even one that
  orjson would refuse (raw control bytes or non-UTF-8 bytes inside strings are canonical
  but not RFC 8259 JSON); otherwise "noncanonical" when orjson parses it and "invalid"
  when orjson does not.

* **decode** raises CanonicalJSONError for an integer longer than Python's
  ``sys.get_int_max_str_digits()`` (4300 by default), which ``validate`` accepts.

Speed: the common case, a flat object of strings and integers such as a Sugar
``.metadata`` file, is checked by one compiled regular expression plus one findall of its
keys. Their strings are a run of "not a quote", which ``re`` scans about ten times faster
than a run of a two-byte class; a document with backslashes first has each escape pair
replaced by two plain bytes (same offsets, same quotes). Anything else, and every
document with a violation, goes through an iterative byte-offset scanner that also finds
the first violation.
"""

from __future__ import annotations

import errno
import operator
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson

__all__ = [
    "CanonicalJSONError",
    "Violation",
    "check_file",
    "classify",
    "decode",
    "encode",
    "validate",
]

DEFAULT_MAX_DEPTH = 512

# A canonical string token, quotes included: runs of plain bytes and the two escapes.
# Possessive quantifiers keep every pattern linear (no backtracking into a run).
_STRING = rb'"[^"\\]*+(?:\\["\\][^"\\]*+)*+"'
# The same for a document without any backslash: re scans a run of one excluded byte
# about ten times faster than a run of a two-byte class.
_PLAIN_STRING = rb'"[^"]*+"'
_INTEGER = rb"(?:0|-?[1-9][0-9]*+)"


def _flat_patterns(string: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """A whole flat object of scalars (the shape of a Sugar .metadata file), and one
    member of it with its key's content captured and the byte after it. Run with findall
    from offset 1 over a flat object, the second matches exactly its members, in order."""
    scalar = rb"(?:" + string + rb"|" + _INTEGER + rb"|true|false|null)"
    member = string + rb":" + scalar
    whole = re.compile(rb"\{(?:" + member + rb"(?:," + member + rb")*+)?\}")
    keyed = re.compile(rb'"(' + string[1:-1] + rb')":' + scalar + rb"[,}]")
    return whole, keyed


_FLAT_MEMBER = _flat_patterns(_STRING)[1]
_PLAIN_FLAT_OBJECT, _PLAIN_FLAT_MEMBER = _flat_patterns(_PLAIN_STRING)
# Every token of a canonical document; used by the decoder on validated input only.
_TOKEN = re.compile(_STRING + rb"|" + _INTEGER + rb"|true|false|null|[\[\]{}:,]")
_NUMBER = re.compile(rb"-?([0-9]*+)(\.[0-9]*+)?([eE][-+]?[0-9]*+)?")
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
# Maps every digit to "0" and every other byte to ".": a run of 19 zeros in the result is
# an integer (or digits in a string) that may not fit orjson's 64 bits, which it would
# turn into a float. translate and find run at memory speed, a regex search does not.
_DIGIT_MASK = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x2E for byte in range(256))
_LONG_DIGITS = b"0" * 19

_WHITESPACE_NAMES = {0x20: "space", 0x09: "tab", 0x0A: "newline", 0x0D: "carriage return"}
_VALUE_START = frozenset(b'{["-0123456789tfn')
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}

# Scanner states: what the next byte must start.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER = range(6)
_END = object()


@dataclass(frozen=True)
class Violation:
    """The first place where a document departs from canonical JSON."""

    offset: int  # byte offset of the first violation
    line: int  # 1-based
    column: int  # 1-based, in bytes
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column} (byte {self.offset}): {self.reason}"


class CanonicalJSONError(ValueError):
    """The bytes are not canonical JSON; ``violation`` says where and why."""

    def __init__(self, violation: Violation) -> None:
        super().__init__(str(violation))
        self.violation = violation


class _Fail(Exception):
    """Internal: the scanner found a violation at ``offset``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason


def _violation(data: bytes, offset: int, reason: str) -> Violation:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return Violation(offset, data.count(b"\n", 0, offset) + 1, offset - line_start + 1, reason)


def _describe(byte: int) -> str:
    if byte in _WHITESPACE_NAMES:
        return _WHITESPACE_NAMES[byte]
    if 0x21 <= byte < 0x7F:
        return f"'{chr(byte)}'"
    return f"byte 0x{byte:02x}"


def _unescape(content: bytes) -> bytes:
    return _ESCAPE.sub(rb"\1", content) if b"\\" in content else content


# --- validation -------------------------------------------------------------------------


def validate(
    data: bytes, max_depth: int = DEFAULT_MAX_DEPTH, *, require_utf8: bool = False
) -> Violation | None:
    """Return the first violation of canonical JSON in ``data``, or None if it is canonical.

    Never raises on any content: nesting deeper than ``max_depth`` is a violation. With
    ``require_utf8``, a string whose bytes are not well-formed UTF-8 is a violation too.
    """
    if _fast_ok(data, max_depth, require_utf8):
        return None
    try:
        _scan(data, max_depth, require_utf8)
    except _Fail as fail:
        return _violation(data, fail.offset, fail.reason)
    return None


def _fast_ok(data: bytes, max_depth: int, require_utf8: bool) -> bool:
    """True only if ``data`` is canonical; False means "ask the scanner" (not "invalid")."""
    if max_depth < 1 or data[:1] != b"{":
        return False
    plain = data
    if b"\\" in data:
        # Each escape pair becomes two plain bytes: the quotes left are exactly the quotes
        # that open and close strings, so the backslash-free patterns apply, to the same
        # offsets. A backslash left over is an invalid escape: let the scanner say where.
        plain = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")
        if b"\\" in plain:
            return False
    if _PLAIN_FLAT_OBJECT.fullmatch(plain) is None:
        return False
    if require_utf8:
        # Outside strings a flat object is ASCII, so this checks exactly its strings.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
    keys: list[bytes] = _PLAIN_FLAT_MEMBER.findall(plain, 1)
    if plain is not data and any(b"__" in key for key in keys):
        # Some key may have held an escape pair: read the real keys (slower, and rare).
        keys = [_unescape(key) for key in _FLAT_MEMBER.findall(data, 1)]
    return all(map(operator.lt, keys, islice(keys, 1, None)))


def _scan(data: bytes, max_depth: int, require_utf8: bool) -> None:
    """Walk ``data`` byte offset by byte offset; raise _Fail at the first violation."""
    size = len(data)
    if size == 0:
        raise _Fail(0, "empty document")
    # One entry per open container: None for an array, the last key for an object.
    stack: list[bytes | None] = []
    state = _VALUE
    pos = 0
    while True:
        if pos >= size:
            if state == _AFTER and not stack:
                return
            raise _Fail(size, "unexpected end of document, " + _expected(state, stack))
        byte = data[pos]
        if byte in _WHITESPACE_NAMES:
            if state == _AFTER and not stack:
                if byte == 0x0A and pos == size - 1:
                    raise _Fail(pos, "trailing newline")
                raise _Fail(pos, f"whitespace ({_describe(byte)}) after the top-level value")
            raise _Fail(pos, f"whitespace ({_describe(byte)}) outside strings")

        if state == _AFTER:
            if not stack:
                if byte in _VALUE_START:
                    raise _Fail(pos, "more than one top-level value")
                raise _Fail(pos, f"unexpected {_describe(byte)} after the top-level value")
            in_array = stack[-1] is None
            if byte == 0x2C:
                state = _VALUE if in_array else _KEY
            elif byte == (0x5D if in_array else 0x7D):
                stack.pop()
            else:
                raise _Fail(pos, _expected(state, stack) + f", found {_describe(byte)}")
            pos += 1
            continue

        if state == _COLON:
            if byte != 0x3A:
                raise _Fail(pos, f"expected ':' after an object key, found {_describe(byte)}")
            state = _VALUE
            pos += 1
            continue

        if state in (_KEY, _KEY_OR_CLOSE):
            if byte == 0x7D:
                if state == _KEY:
                    raise _Fail(pos, "trailing comma in object")
                stack.pop()
                state = _AFTER
                pos += 1
                continue
            if byte != 0x22:
                raise _Fail(pos, f"expected a string key, found {_describe(byte)}")
            end = _scan_string(data, pos, require_utf8)
            key = _unescape(data[pos + 1 : end - 1])
            last = stack[-1]
            if state == _KEY and last is not None and key <= last:
                if key == last:
                    raise _Fail(pos, "duplicate object key")
                raise _Fail(pos, "object keys not in byte order")
            stack[-1] = key
            state = _COLON
            pos = end
            continue

        # _VALUE or _VALUE_OR_CLOSE
        if byte == 0x5D and state == _VALUE_OR_CLOSE:
            stack.pop()
            state = _AFTER
            pos += 1
        elif byte in (0x7B, 0x5B):
            if len(stack) >= max_depth:
                raise _Fail(pos, f"nesting deeper than {max(max_depth, 0)} levels")
            if byte == 0x7B:
                stack.append(b"")
                state = _KEY_OR_CLOSE
            else:
                stack.append(None)
                state = _VALUE_OR_CLOSE
            pos += 1
        elif byte == 0x22:
            pos = _scan_string(data, pos, require_utf8)
            state = _AFTER
        elif byte == 0x2D or 0x30 <= byte <= 0x39:
            pos = _scan_number(data, pos)
            state = _AFTER
        elif byte in _LITERALS and data.startswith(_LITERALS[byte], pos):
            pos += len(_LITERALS[byte])
            state = _AFTER
        elif 0x41 <= byte <= 0x5A or 0x61 <= byte <= 0x7A:
            raise _Fail(pos, "invalid literal (expected true, false or null)")
        elif byte == 0x5D and state == _VALUE and stack and stack[-1] is None:
            raise _Fail(pos, "trailing comma in array")
        else:
            raise _Fail(pos, f"expected a value, found {_describe(byte)}")


def _expected(state: int, stack: list[bytes | None]) -> str:
    if state == _AFTER:
        return "expected ',' or ']'" if stack[-1] is None else "expected ',' or '}'"
    return {
        _VALUE: "expected a value",
        _VALUE_OR_CLOSE: "expected a value or ']'",
        _KEY: "expected a string key",
        _KEY_OR_CLOSE: "expected a string key or '}'",
        _COLON: "expected ':'",
    }[state]


def _scan_string(data: bytes, pos: int, require_utf8: bool) -> int:
    """Check the string token opening at ``pos``; return the offset after its closing quote."""
    size = len(data)
    index = pos + 1
    at = data.find(b'"', index)
    while True:
        backslash = data.find(b"\\", index, size if at < 0 else at)
        if backslash < 0:
            if at < 0:
                raise _Fail(size, f"unterminated string (opened at byte {pos})")
            break
        if backslash + 1 >= size:
            raise _Fail(size, f"unterminated string (opened at byte {pos})")
        escaped = data[backslash + 1]
        if escaped not in (0x22, 0x5C):
            shown = f"\\{chr(escaped)}" if 0x21 <= escaped < 0x7F else f"\\ + {_describe(escaped)}"
            raise _Fail(backslash, f'invalid escape {shown} (only \\" and \\\\ are allowed)')
        index = backslash + 2
        if escaped == 0x22:  # that was the quote found: look for the next one
            at = data.find(b'"', index)
    if require_utf8:
        try:
            data[pos + 1 : at].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Fail(pos + 1 + exc.start, "string is not valid UTF-8") from None
    return at + 1


def _scan_number(data: bytes, pos: int) -> int:
    """Check the number token starting at ``pos``; return the offset after it."""
    match = _NUMBER.match(data, pos)
    if match is None:  # cannot happen: every part of the pattern is optional
        raise _Fail(pos, "invalid number")
    digits, fraction, exponent = match.groups()
    if fraction is not None:
        raise _Fail(pos, "floats are not allowed")
    if exponent is not None:
        raise _Fail(pos, "exponents are not allowed")
    if not digits:
        raise _Fail(pos, "'-' must be followed by a digit")
    if digits[0] == 0x30:
        if len(digits) > 1:
            raise _Fail(pos, "leading zeros are not allowed")
        if data[pos] == 0x2D:
            raise _Fail(pos, "negative zero is not allowed")
    return match.end()


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
        except orjson.JSONDecodeError:
            pass
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
            value = _unescape(token[1:-1]).decode("utf-8", "surrogateescape")
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
                violation = _violation(data, offset, "integer has too many digits to decode")
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
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        pass
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
