"""OLPC Canonical JSON: validator, decoder, encoder, classify and check_file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xsbackup.errors import XsbackupError
from xsbackup.snapshots import cjson
from xsbackup.snapshots.cjson import (
    CanonicalJSONError,
    Violation,
    check_file,
    classify,
    decode,
    encode,
    scanner,
    validate,
)

# No example database: these tests must not leave files behind in the work tree.
HYPOTHESIS = settings(database=None, max_examples=300, deadline=None)

DEEP_OK = b"[" * 512 + b"]" * 512
DEEP_OBJECTS_OK = b'{"a":' * 511 + b"[]" + b"}" * 511

VALID = [
    pytest.param(b'{"a":"x","b":1}', id="spec-object"),
    pytest.param(b"[true,false,null,0,-5]", id="spec-array"),
    pytest.param(b"{}", id="empty-object"),
    pytest.param(b"[]", id="empty-array"),
    pytest.param(b'""', id="empty-string-top-level"),
    pytest.param(b"0", id="zero-top-level"),
    pytest.param(b"-1234567890", id="negative-int"),
    pytest.param(b"123456789012345678901234567890", id="int-beyond-64-bits"),
    pytest.param(b"true", id="true"),
    pytest.param(b"false", id="false"),
    pytest.param(b"null", id="null"),
    pytest.param(b'"\\"\\\\"', id="both-escapes"),
    pytest.param(b'"a\x00\x01\t\n\r\x1f\x7fb"', id="raw-control-bytes"),
    pytest.param('"é ü 😀"'.encode(), id="raw-non-ascii"),
    pytest.param(b'"\xff\xfe"', id="non-utf8-string"),
    pytest.param(b'{"Z":1,"a":2}', id="upper-before-lower"),
    pytest.param(b'{"":0,"a":1,"aa":2,"b":3}', id="prefix-sorts-first"),
    pytest.param(b'{"a":1,"a\x00":2}', id="prefix-before-control-byte"),
    pytest.param(b'{"a":1,"a ":2}', id="prefix-before-space"),
    pytest.param('{"z":1,"é":2}'.encode(), id="ascii-before-non-ascii"),
    # UTF-16 order (JavaScript) would put U+1F600 (D83D DE00) before U+FFFF.
    pytest.param('{"\uffff":1,"😀":2}'.encode(), id="utf8-not-utf16-order"),
    # Bytes order: 0x80 < 0xC3, though surrogateescape code points would say otherwise.
    pytest.param(b'{"\x80":1,"\xc3\xa9":2}', id="non-utf8-key-byte-order"),
    # Keys compare unescaped: '"' (0x22) < '#' (0x23), though '\' (0x5C) > '#'.
    pytest.param(b'{"\\"":1,"#":2}', id="keys-compare-unescaped"),
    pytest.param(b'{"a":{"b":[1,{"c":null}]},"b":[[],{}]}', id="nested"),
    pytest.param(DEEP_OK, id="depth-512-arrays"),
    pytest.param(DEEP_OBJECTS_OK, id="depth-512-objects"),
]

INVALID = [
    # (document, offset of the first violation, words of the reason)
    pytest.param(b'{"b":1,"a":2}', 7, "not in byte order", id="spec-key-order"),
    pytest.param(b'{"a": 1}', 5, "whitespace", id="spec-space"),
    pytest.param(b"1.5", 0, "floats", id="spec-float"),
    pytest.param(b"007", 0, "leading zeros", id="spec-leading-zeros"),
    pytest.param(b'"\\u00e9"', 1, "invalid escape \\u", id="spec-u-escape"),
    pytest.param(b"[1,]", 3, "trailing comma", id="spec-trailing-comma"),
    pytest.param(b'{"a":\t1}', 5, "whitespace (tab)", id="tab"),
    pytest.param(b"[1,\n2]", 3, "whitespace (newline)", id="newline-between"),
    pytest.param(b"[1\r,2]", 2, "carriage return", id="carriage-return"),
    pytest.param(b" {}", 0, "whitespace", id="leading-space"),
    pytest.param(b"{}\n", 2, "trailing newline", id="trailing-newline"),
    pytest.param(b"{} ", 2, "after the top-level value", id="trailing-space"),
    pytest.param(b"[1.0]", 1, "floats", id="float-in-array"),
    pytest.param(b"1e5", 0, "exponents", id="exponent"),
    pytest.param(b'{"a":1E+5}', 5, "exponents", id="exponent-upper"),
    pytest.param(b"-0", 0, "negative zero", id="negative-zero"),
    pytest.param(b"[-01]", 1, "leading zeros", id="negative-leading-zero"),
    pytest.param(b"-", 0, "must be followed by a digit", id="lone-minus"),
    pytest.param(b"+1", 0, "expected a value", id="plus-sign"),
    pytest.param(b'"\\n"', 1, "invalid escape \\n", id="escape-n"),
    pytest.param(b'"a\\t"', 2, "invalid escape \\t", id="escape-t"),
    pytest.param(b'"\\/"', 1, "invalid escape \\/", id="escape-slash"),
    pytest.param(b'"x\\u0041"', 2, "invalid escape \\u", id="escape-u0041"),
    pytest.param(b'"\\\x01"', 1, "invalid escape", id="escape-control-byte"),
    pytest.param(b'"a\\b"', 2, "invalid escape \\b", id="unescaped-backslash"),
    pytest.param(b'"a\\"', 4, "unterminated string", id="backslash-eats-quote"),
    pytest.param(b'"a"b"', 3, "after the top-level value", id="raw-quote-top-level"),
    pytest.param(b'{"a":"x"y"}', 8, "expected ',' or '}'", id="raw-quote-in-object"),
    pytest.param(b'"abc', 4, "unterminated string", id="unterminated"),
    pytest.param(b'{"a":1,"a":2}', 7, "duplicate", id="duplicate-key"),
    pytest.param(b'{"a":{"x":1,"x":1}}', 12, "duplicate", id="duplicate-nested"),
    pytest.param(b'{"a\x00":1,"a":2}', 8, "not in byte order", id="control-byte-key-order"),
    pytest.param('{"é":1,"z":2}'.encode(), 8, "not in byte order", id="non-ascii-key-order"),
    pytest.param('{"😀":1,"\uffff":2}'.encode(), 10, "not in byte order", id="utf16-order"),
    pytest.param(b'{"#":1,"\\"":2}', 7, "not in byte order", id="escaped-key-order"),
    pytest.param(b"[" * 513 + b"]" * 513, 512, "nesting deeper than 512", id="deep-arrays"),
    pytest.param(b'{"a":' * 512 + b"[]" + b"}" * 512, 2560, "nesting", id="deep-objects"),
    pytest.param(b'{"a":1,}', 7, "trailing comma", id="object-trailing-comma"),
    pytest.param(b"[,1]", 1, "expected a value", id="leading-comma"),
    pytest.param(b"", 0, "empty document", id="empty"),
    pytest.param(b"{}{}", 2, "more than one top-level value", id="two-objects"),
    pytest.param(b'"a""b"', 3, "more than one top-level value", id="two-strings"),
    pytest.param(b"truefalse", 4, "more than one top-level value", id="two-literals"),
    pytest.param(b"1 2", 1, "whitespace", id="two-numbers"),
    pytest.param(b"tru", 0, "invalid literal", id="tru"),
    pytest.param(b"True", 0, "invalid literal", id="True"),
    pytest.param(b"[nul]", 1, "invalid literal", id="nul"),
    pytest.param(b"[nulll]", 5, "expected ',' or ']'", id="nulll"),
    pytest.param(b"fals", 0, "invalid literal", id="fals"),
    pytest.param(b"NaN", 0, "invalid literal", id="nan"),
    pytest.param(b'{"a"}', 4, "expected ':'", id="missing-colon"),
    pytest.param(b"{1:2}", 1, "expected a string key", id="unquoted-key"),
    pytest.param(b"[1}", 2, "expected ',' or ']'", id="mismatched-bracket"),
    pytest.param(b'{"a":1', 6, "unexpected end", id="unclosed-object"),
    pytest.param(b"[", 1, "unexpected end", id="unclosed-array"),
    pytest.param(b'{"a":1}x', 7, "after the top-level value", id="trailing-garbage"),
    pytest.param(b"\xef\xbb\xbf{}", 0, "expected a value", id="byte-order-mark"),
    pytest.param(b"'a'", 0, "expected a value", id="single-quotes"),
]


@pytest.mark.parametrize("doc", VALID)
def test_valid_documents(doc: bytes) -> None:
    assert validate(doc) is None
    assert classify(doc) == "canonical"
    assert encode(decode(doc)) == doc


@pytest.mark.parametrize(("doc", "offset", "reason"), INVALID)
def test_invalid_documents(doc: bytes, offset: int, reason: str) -> None:
    violation = validate(doc)
    assert violation is not None
    assert violation.offset == offset
    assert reason in violation.reason
    with pytest.raises(CanonicalJSONError) as caught:
        decode(doc)
    assert caught.value.violation == violation


def test_spec_examples_decode() -> None:
    assert decode(b'{"a":"x","b":1}') == {"a": "x", "b": 1}
    assert decode(b"[true,false,null,0,-5]") == [True, False, None, 0, -5]
    assert decode(b'"\\"\\\\"') == '"\\'
    assert decode(b"123456789012345678901234567890") == 123456789012345678901234567890


def test_decode_refuses_integers_python_cannot_read() -> None:
    limit = sys.get_int_max_str_digits()
    if limit == 0:
        pytest.skip("this interpreter reads integers of any length")
    doc = b'{"a":[1,' + b"1" * (limit + 1) + b"]}"
    assert validate(doc) is None
    with pytest.raises(CanonicalJSONError) as caught:
        decode(doc)
    assert caught.value.violation.offset == 8
    assert caught.value.violation.reason == "integer has too many digits to decode"


def test_line_and_column_count_bytes() -> None:
    violation = validate('"é\nb" x'.encode())
    assert violation == Violation(6, 2, 3, "whitespace (space) after the top-level value")
    assert str(violation) == (
        "line 2, column 3 (byte 6): whitespace (space) after the top-level value"
    )
    assert validate(b"[1,\n2]") == Violation(3, 1, 4, "whitespace (newline) outside strings")


def test_error_is_a_value_error_carrying_the_violation() -> None:
    with pytest.raises(ValueError, match=r"line 1, column 8 \(byte 7\)") as caught:
        decode(b'{"b":1,"a":2}')
    assert isinstance(caught.value, CanonicalJSONError)
    assert caught.value.violation.reason == "object keys not in byte order"
    assert isinstance(caught.value, XsbackupError)  # the one error tree, with an exit code
    assert caught.value.message == "line 1, column 8 (byte 7): object keys not in byte order"


def test_max_depth_is_a_parameter_and_never_a_recursion_error() -> None:
    assert validate(b"[[]]", max_depth=2) is None
    assert validate(b"[[]]", max_depth=1) == Violation(1, 1, 2, "nesting deeper than 1 levels")
    assert validate(b"[]", max_depth=0) == Violation(0, 1, 1, "nesting deeper than 0 levels")
    assert validate(b"{}", max_depth=0) is not None
    assert validate(b"1", max_depth=0) is None
    huge = b"[" * 200_000 + b"]" * 200_000
    assert validate(huge) == Violation(512, 1, 513, "nesting deeper than 512 levels")
    assert validate(huge, max_depth=200_000) is None
    value = decode(huge, max_depth=200_000)
    depth = 0
    while value:
        value = value[0]
        depth += 1
    assert depth == 199_999


# --- non-UTF-8 bytes inside strings -----------------------------------------------------

NON_UTF8 = [
    # (document, offset of the first ill-formed byte, decoded value)
    pytest.param(b'"\xff"', 1, "\udcff", id="lone-ff"),
    pytest.param(b'{"a":"ok\xc3"}', 8, {"a": "ok\udcc3"}, id="truncated-sequence"),
    pytest.param(b'"\xed\xa0\x80"', 1, "\udced\udca0\udc80", id="encoded-surrogate"),
    pytest.param(b'"\xc0\xaf"', 1, "\udcc0\udcaf", id="overlong"),
    pytest.param(b'{"\x80":1,"\xc3\xa9":2}', 2, {"\udc80": 1, "é": 2}, id="key"),
    pytest.param(b'["x","a\\"\xfe"]', 9, ["x", 'a"\udcfe'], id="after-escape"),
]


@pytest.mark.parametrize(("doc", "offset", "value"), NON_UTF8)
def test_non_utf8_strings_are_canonical_and_round_trip(doc: bytes, offset: int, value: Any) -> None:
    assert validate(doc) is None
    assert classify(doc) == "canonical"  # although orjson refuses it
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(doc)
    assert decode(doc) == value
    assert encode(decode(doc)) == doc
    violation = validate(doc, require_utf8=True)
    assert violation is not None
    assert violation.offset == offset
    assert violation.reason == "string is not valid UTF-8"
    with pytest.raises(CanonicalJSONError):
        decode(doc, require_utf8=True)


def test_require_utf8_accepts_well_formed_text() -> None:
    doc = '{"a":"é","b":["😀"]}'.encode()
    assert validate(doc, require_utf8=True) is None
    assert decode(doc, require_utf8=True) == {"a": "é", "b": ["😀"]}


def test_encode_bytes_values_raw() -> None:
    assert encode(b'\xff"\\') == b'"\xff\\"\\\\"'
    assert encode(bytearray(b"a")) == b'"a"'
    assert encode({"k": b"\x80"}) == b'{"k":"\x80"}'


def test_encode_sorts_keys_by_bytes_not_code_points() -> None:
    assert encode({"é": 2, "\udc80": 1}) == b'{"\x80":1,"\xc3\xa9":2}'
    assert encode({"😀": 2, "\uffff": 1}) == '{"\uffff":1,"😀":2}'.encode()
    assert encode({"#": 2, '"': 1}) == b'{"\\"":1,"#":2}'


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\udcc3\udca9", id="escapes-spelling-utf8"),
        pytest.param("\ud800", id="high-surrogate"),
        pytest.param("\udc41", id="low-surrogate-not-a-byte"),
    ],
)
def test_encode_refuses_surrogates_that_do_not_round_trip(text: str) -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode(text)


# --- encoder ------------------------------------------------------------------------------


def test_encode_exact_output() -> None:
    value = {"b": [1, -2, True, False, None], "a": {"y": "\n\x00", "x": 'q"\\'}, "": ()}
    assert encode(value) == b'{"":[],"a":{"x":"q\\"\\\\","y":"\n\x00"},"b":[1,-2,true,false,null]}'
    assert encode(0) == b"0"
    assert encode(True) == b"true"
    assert encode("é") == '"é"'.encode()
    assert encode(10**30) == b"1000000000000000000000000000000"


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(1.5, TypeError, id="float"),
        pytest.param(1.0, TypeError, id="integral-float"),
        pytest.param([float("nan")], TypeError, id="nan-in-list"),
        pytest.param({1: "a"}, TypeError, id="int-key"),
        pytest.param({b"a": 1}, TypeError, id="bytes-key"),
        pytest.param({None: 1}, TypeError, id="none-key"),
        pytest.param({1, 2}, TypeError, id="set"),
        pytest.param(object(), TypeError, id="object"),
    ],
)
def test_encode_refuses(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode(value)


def test_encode_refuses_cycles_and_excess_depth() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="circular"):
        encode(loop)
    nested: Any = []
    for _ in range(600):
        nested = [nested]
    with pytest.raises(ValueError, match="nesting deeper than 512"):
        encode(nested)
    assert validate(encode(nested, max_depth=601), max_depth=601) is None
    shared = [1]
    assert encode([shared, shared]) == b"[[1],[1]]"  # shared, not circular


# --- properties -----------------------------------------------------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)


@HYPOTHESIS
@given(VALUES)
def test_round_trip(value: Any) -> None:
    doc = encode(value)
    assert validate(doc) is None
    assert classify(doc) == "canonical"
    assert decode(doc) == value
    assert encode(decode(doc)) == doc


@HYPOTHESIS
@given(
    st.recursive(
        st.binary() | st.text() | st.integers(),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=4), children, max_size=5)
        ),
        max_leaves=20,
    )
)
def test_raw_bytes_round_trip_through_surrogateescape(value: Any) -> None:
    doc = encode(value)
    assert validate(doc) is None
    assert encode(decode(doc)) == doc


JSON64 = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
ORJSON_OPTIONS = st.sampled_from(
    [0, orjson.OPT_INDENT_2, orjson.OPT_SORT_KEYS, orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS]
)


@HYPOTHESIS
@given(JSON64, ORJSON_OPTIONS)
def test_any_orjson_document_re_encodes_canonically(value: Any, option: int) -> None:
    doc = orjson.dumps(value, option=option)
    parsed = orjson.loads(doc)
    canonical = encode(parsed)
    assert validate(canonical) is None
    assert decode(canonical) == parsed
    # The canonical form is unique, so orjson's bytes are canonical exactly when equal.
    assert classify(doc) == ("canonical" if doc == canonical else "noncanonical")


MUTATION_BYTES = st.sampled_from(list(b' ,:[]{}""\\\\0123-.eEtfnrul\xc3\xa9\xff_a\n'))
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]), st.integers(0, 1 << 16), MUTATION_BYTES
    ),
    min_size=1,
    max_size=3,
)
FLAT = st.dictionaries(
    st.text(st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=4)
    | st.text('_"\\a', max_size=4),  # escape pairs become "__" on the fast path
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=6),
    max_size=6,
)

# Integers stay far from orjson's 64-bit limit even after a few digits are inserted.
SMALL_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


def _mutate(doc: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(doc)
    for kind, where, byte in mutations:
        at = where % (len(data) + 1)
        if kind == "insert":
            data.insert(at, byte)
        elif at < len(data):
            if kind == "delete":
                del data[at]
            else:
                data[at] = byte
    return bytes(data)


def _scanner_accepts(doc: bytes, require_utf8: bool = False) -> bool:
    try:
        scanner._scan(doc, cjson.DEFAULT_MAX_DEPTH, require_utf8)
    except scanner._Fail:
        return False
    return True


def _orjson_oracle(doc: bytes) -> bool:
    """Canonical per an independent route: orjson parses it and encode gives it back."""
    try:
        return encode(orjson.loads(doc)) == doc
    except (orjson.JSONDecodeError, TypeError):
        return False


@settings(HYPOTHESIS, max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(FLAT | SMALL_VALUES, MUTATIONS, st.booleans())
def test_mutated_documents_agree_with_scanner_and_orjson(
    value: Any, mutations: list[tuple[str, int, int]], require_utf8: bool
) -> None:
    doc = _mutate(encode(value), mutations)
    verdict = validate(doc, require_utf8=require_utf8)
    # The fast path may only ever accept what the exact scanner accepts.
    if scanner._fast_ok(doc, cjson.DEFAULT_MAX_DEPTH, require_utf8):
        assert _scanner_accepts(doc, require_utf8)
    assert (verdict is None) == _scanner_accepts(doc, require_utf8)
    if verdict is not None:
        assert 0 <= verdict.offset <= len(doc)
        assert verdict.reason
    # Where orjson can see the whole document (UTF-8, no raw control bytes), it agrees.
    if not any(byte < 0x20 for byte in doc):
        try:
            doc.decode("utf-8")
        except UnicodeDecodeError:
            return
        assert (verdict is None) == _orjson_oracle(doc)


@HYPOTHESIS
@given(FLAT)
def test_flat_objects_take_the_fast_path(value: dict[str, Any]) -> None:
    doc = encode(value)
    assert scanner._fast_ok(doc, cjson.DEFAULT_MAX_DEPTH, False)
    assert scanner._fast_ok(doc, cjson.DEFAULT_MAX_DEPTH, True)


# --- classify -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(b'{"a":"x","b":1}', "canonical", id="canonical"),
        pytest.param(b'"\x01"', "canonical", id="raw-control-byte"),
        pytest.param(b'"\xff"', "canonical", id="non-utf8"),
        pytest.param(b'{"b":1,"a":2}', "noncanonical", id="unsorted"),
        pytest.param(b'{"a": 1}', "noncanonical", id="space"),
        pytest.param(b'{"a":1}\n', "noncanonical", id="trailing-newline"),
        pytest.param(b"1.5", "noncanonical", id="float"),
        pytest.param(b"1e5", "noncanonical", id="exponent"),
        pytest.param(b"-0", "noncanonical", id="negative-zero"),
        pytest.param(b'"\\u00e9"', "noncanonical", id="u-escape"),
        pytest.param(b'{"a":1,"a":2}', "noncanonical", id="duplicate"),
        pytest.param(b"[" * 600 + b"]" * 600, "noncanonical", id="too-deep"),
        pytest.param(b"007", "invalid", id="leading-zeros"),
        pytest.param(b"[1,]", "invalid", id="trailing-comma"),
        pytest.param(b"", "invalid", id="empty"),
        pytest.param(b"tru", "invalid", id="misspelt"),
        pytest.param(b"{}{}", "invalid", id="two-values"),
        pytest.param(b'"\\x"', "invalid", id="bad-escape"),
        pytest.param(b'{"a":', "invalid", id="truncated"),
    ],
)
def test_classify(doc: bytes, expected: str) -> None:
    assert classify(doc) == expected


# --- check_file ---------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_check_file_canonical(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.metadata", b'{"keep":0,"title":"x"}')
    assert check_file(path, max_bytes=1024) == {
        "path": str(path),
        "status": "canonical",
        "offset": None,
        "line": None,
        "column": None,
        "reason": None,
    }


def test_check_file_noncanonical_and_invalid(tmp_path: Path) -> None:
    path = _write(tmp_path / "b.metadata", b'{\n  "keep": 0\n}\n')
    assert check_file(str(path), max_bytes=1024) == {
        "path": str(path),
        "status": "noncanonical",
        "offset": 1,
        "line": 1,
        "column": 2,
        "reason": "whitespace (newline) outside strings",
    }
    path = _write(tmp_path / "c.metadata", b'{"keep":0,"title":')
    report = check_file(path, max_bytes=1024)
    assert report["status"] == "invalid"
    assert report["offset"] == 18
    assert report["reason"] == "unexpected end of document, expected a value"


def test_check_file_require_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.metadata", b'{"title":"\xff"}')
    assert check_file(path, max_bytes=1024)["status"] == "canonical"
    report = check_file(path, max_bytes=1024, require_utf8=True)
    assert report["status"] == "invalid"  # orjson refuses non-UTF-8 too
    assert report["offset"] == 10


def test_check_file_does_not_follow_symlinks(tmp_path: Path) -> None:
    target = _write(tmp_path / "target.metadata", b"{}")
    link = tmp_path / "link.metadata"
    link.symlink_to(target)
    report = check_file(link, max_bytes=1024)
    assert report["status"] == "symlink"
    assert report["path"] == str(link)
    assert report["offset"] is None
    dangling = tmp_path / "dangling.metadata"
    dangling.symlink_to(tmp_path / "missing")
    assert check_file(dangling, max_bytes=1024)["status"] == "symlink"


def test_check_file_too_large_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.metadata"
    with path.open("wb") as handle:
        handle.truncate(1 << 30)  # sparse: reading it would be slow and huge

    def no_read(fd: int, size: int) -> bytes:
        raise AssertionError("a too-large file was read")

    monkeypatch.setattr(os, "read", no_read)
    report = check_file(path, max_bytes=4096)
    assert report["status"] == "too-large"
    assert report["offset"] is None
    assert "1073741824 bytes" in report["reason"]


def test_check_file_size_limit_is_inclusive(tmp_path: Path) -> None:
    doc = encode({"k": "v" * 100})
    path = _write(tmp_path / "edge.metadata", doc)
    assert check_file(path, max_bytes=len(doc))["status"] == "canonical"
    assert check_file(path, max_bytes=len(doc) - 1)["status"] == "too-large"


def test_check_file_not_regular(tmp_path: Path) -> None:
    assert check_file(tmp_path, max_bytes=1024)["status"] == "not-regular"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check_file(fifo, max_bytes=1024)["status"] == "not-regular"  # and did not block


def test_check_file_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        check_file(tmp_path / "missing", max_bytes=1024)
