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

The package: ``scanner`` validates (and says why not), ``codec`` decodes and encodes,
``files`` classifies documents and checks stored files. Violations raise
``CanonicalJSONError`` (``xsbackup.errors``), which is also a ValueError.
"""

from xsbackup.errors import CanonicalJSONError
from xsbackup.snapshots.cjson.codec import decode, encode
from xsbackup.snapshots.cjson.files import check_file, classify
from xsbackup.snapshots.cjson.scanner import DEFAULT_MAX_DEPTH, Violation, validate

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "CanonicalJSONError",
    "Violation",
    "check_file",
    "classify",
    "decode",
    "encode",
    "validate",
]
