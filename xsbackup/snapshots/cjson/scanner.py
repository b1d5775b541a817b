"""Canonical JSON validation: the first violation in a document, or None.

Speed: the common case, a flat object of strings and integers such as a Sugar
``.metadata`` file, is checked by one compiled regular expression plus one findall of its
keys. Their strings are a run of "not a quote", which ``re`` scans about ten times faster
than a run of a two-byte class; a document with backslashes first has each escape pair
replaced by two plain bytes (same offsets, same quotes). Anything else, and every
document with a violation, goes through an iterative byte-offset scanner that also finds
the first violation.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from itertools import islice

DEFAULT_MAX_DEPTH = 512

# A canonical string token, quotes included: runs of plain bytes and the two escapes.
# Possessive quantifiers keep every pattern linear (no backtracking into a run).
STRING = rb'"[^"\\]*+(?:\\["\\][^"\\]*+)*+"'
# The same for a document without any backslash: re scans a run of one excluded byte
# about ten times faster than a run of a two-byte class.
_PLAIN_STRING = rb'"[^"]*+"'
INTEGER = rb"(?:0|-?[1-9][0-9]*+)"


def _flat_patterns(string: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """A whole flat object of scalars (the shape of a Sugar .metadata file), and one
    member of it with its key's content captured and the byte after it. Run with findall
    from offset 1 over a flat object, the second matches exactly its members, in order."""
    scalar = rb"(?:" + string + rb"|" + INTEGER + rb"|true|false|null)"
    member = string + rb":" + scalar
    whole = re.compile(rb"\{(?:" + member + rb"(?:," + member + rb")*+)?\}")
    keyed = re.compile(rb'"(' + string[1:-1] + rb')":' + scalar + rb"[,}]")
    return whole, keyed


_FLAT_MEMBER = _flat_patterns(STRING)[1]
_PLAIN_FLAT_OBJECT, _PLAIN_FLAT_MEMBER = _flat_patterns(_PLAIN_STRING)
_NUMBER = re.compile(rb"-?([0-9]*+)(\.[0-9]*+)?([eE][-+]?[0-9]*+)?")
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)

_WHITESPACE_NAMES = {0x20: "space", 0x09: "tab", 0x0A: "newline", 0x0D: "carriage return"}
_VALUE_START = frozenset(b'{["-0123456789tfn')
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}

# Scanner states: what the next byte must start.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER = range(6)


@dataclass(frozen=True)
class Violation:
    """The first place where a document departs from canonical JSON."""

    offset: int  # byte offset of the first violation
    line: int  # 1-based
    column: int  # 1-based, in bytes
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column} (byte {self.offset}): {self.reason}"


class _Fail(Exception):
    """Internal: the scanner found a violation at ``offset``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason


def violation_at(data: bytes, offset: int, reason: str) -> Violation:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return Violation(offset, data.count(b"\n", 0, offset) + 1, offset - line_start + 1, reason)


def _describe(byte: int) -> str:
    if byte in _WHITESPACE_NAMES:
        return _WHITESPACE_NAMES[byte]
    if 0x21 <= byte < 0x7F:
        return f"'{chr(byte)}'"
    return f"byte 0x{byte:02x}"


def unescape(content: bytes) -> bytes:
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
        return violation_at(data, fail.offset, fail.reason)
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
        keys = [unescape(key) for key in _FLAT_MEMBER.findall(data, 1)]
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
            key = unescape(data[pos + 1 : end - 1])
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
