"""The text forms of sizes, durations and times of day, and the one size formatter."""

from __future__ import annotations

from datetime import timedelta

import pytest

from xsbackup import units


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    ((1 << 20) - 1, "1.0 MiB"), (1 << 20, "1.0 MiB"), (5 * (1 << 30), "5.0 GiB"),
    (3 << 40, "3.0 TiB"), (1 << 50, "1.0 PiB"), (1 << 60, "1024.0 PiB"), (2.5 * 1024, "2.5 KiB"),
])
def test_format_bytes_is_iec(n: int, text: str) -> None:
    assert units.format_bytes(n) == text


@pytest.mark.parametrize("text", ["", "MiB", "1 ", " 1", "1  MiB", "1XB", "1.5", "1e6",
                                  "-1", "1,000", "1Mi", "1.0000000001KiB", "0x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(text)


@pytest.mark.parametrize("value", [True, 1.0, None, -5, [1]])
def test_parse_size_rejects_other_types(value: object) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        units.parse_size(value)  # type: ignore[arg-type]


def test_parse_size_rounds_a_fraction_down_to_whole_bytes() -> None:
    assert units.parse_size("1.0001KiB") == 1024
    assert units.parse_size("0.5k") == 512


@pytest.mark.parametrize(("text", "expected"), [
    ("12h", timedelta(hours=12)), ("12H", timedelta(hours=12)), ("90d", timedelta(days=90)),
    ("2w", timedelta(weeks=2)), ("1m", timedelta(days=31)), ("1y", timedelta(days=365)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert units.parse_duration(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("00:00", (0, 0)), ("03:00", (3, 0)),
                                                ("23:59", (23, 59))])
def test_parse_clock(text: str, expected: tuple[int, int]) -> None:
    assert units.parse_clock(text) == expected


@pytest.mark.parametrize("text", ["3am", "3:00", "24:00", "12:60", "12:5", "", "12:00:00",
                                  " 12:00", "\uff11\uff12:\uff10\uff10"])  # fullwidth digits
def test_parse_clock_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        units.parse_clock(text)
