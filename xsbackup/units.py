"""The text forms of quantities: durations, sizes and times of day, read and written.

One owner for each form. ``config`` checks configured values with these when it loads;
``retention`` reads its ``keep_within`` with ``parse_duration``; everything that prints a
size (the CLI, the web UI) prints it with ``format_bytes``. Standard library only, so the
lowest layers can use it.

* A duration is a whole number and a unit, as borg prune takes them: ``h`` (hours), ``d``
  (days), ``w`` (weeks), ``m`` (31 days) or ``y`` (365 days); ``12h``, ``90d``, ``2w``,
  ``6m``, ``1y``. ``H`` is borg 1.x's spelling of ``h``. Nothing else: no ``0d``, no
  ``1.5d``, no spaces, no ``M``.
* A size is a number of bytes, optionally with a unit, as rsync's ``--max-size`` takes
  them: ``K``/``KiB``, ``M``/``MiB``, ``G``/``GiB``, ``T``/``TiB`` are powers of 1024;
  ``KB``, ``MB``, ``GB``, ``TB`` are powers of 1000 (case does not matter; a ``B`` alone
  is bytes; one space may separate number and unit). A fraction is allowed with a unit
  and rounds down to whole bytes: ``1.5MiB`` is 1572864.
* A time of day is ``HH:MM``, 00:00 to 23:59, two digits each.
* ``format_bytes`` prints IEC units: ``512 B``, ``1.0 KiB``, ``3.5 MiB``, ``1.2 GiB``.
* A connection budget is OpenSSH's ``MaxStartups``: ``start:rate:full``, or one number N
  meaning ``N:100:N`` (``parse_startups``).
"""

from __future__ import annotations

import re
from datetime import timedelta

from xsbackup.records import record

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# borg's own interval units: "1m" is 31 days, "1y" 365 days. "H" is borg 1.x's spelling.
_DURATION_UNITS = {"h": HOUR, "H": HOUR, "d": DAY, "w": timedelta(weeks=1),
                   "m": timedelta(days=31), "y": timedelta(days=365)}
_DURATION_RE = re.compile(r"([0-9]{1,12})([hHdwmy])")

_SIZE_UNITS = {"": 1, "b": 1,
               "k": 1 << 10, "kib": 1 << 10, "kb": 10 ** 3,
               "m": 1 << 20, "mib": 1 << 20, "mb": 10 ** 6,
               "g": 1 << 30, "gib": 1 << 30, "gb": 10 ** 9,
               "t": 1 << 40, "tib": 1 << 40, "tb": 10 ** 12}
_SIZE_RE = re.compile(r"([0-9]{1,18})(\.[0-9]{1,9})?(?: ?([A-Za-z]{1,3}))?")
SIZE_HELP = ("bytes, or a number with K/KiB, M/MiB, G/GiB, T/TiB (1024-based) or KB, MB, "
             "GB, TB (1000-based)")

_CLOCK_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def parse_duration(text: str) -> timedelta:
    """``"12h"``, ``"90d"``, ``"2w"``, ``"6m"`` (31 days each), ``"1y"`` (365 days)."""
    match = _DURATION_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid duration {text!r}: expected a whole number and a unit, "
                         f"h, d, w, m (31 days) or y (365 days), e.g. 90d")
    count = int(match[1])
    if count == 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than 0")
    try:
        return count * _DURATION_UNITS[match[2]]
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too large") from None


def check_whole_hours(value: object, name: str) -> timedelta:
    """``value`` itself when it is a positive whole number of hours (what a duration
    string can say), else ``ValueError`` naming ``name``."""
    if not isinstance(value, timedelta):
        raise ValueError(f"{name}: must be a duration, got {value!r}")
    if value <= timedelta(0) or value % HOUR:
        raise ValueError(f"{name}: must be a positive whole number of hours, got {value}")
    return value


def format_duration(duration: timedelta) -> str:
    """The inverse of ``parse_duration``: ``"90d"`` for whole days, else ``"12h"``."""
    check_whole_hours(duration, "duration")
    if duration % DAY:
        return f"{duration // HOUR}h"
    return f"{duration // DAY}d"


def parse_size(value: int | str) -> int:
    """Bytes from an integer or a size text (see the module); ``ValueError`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return value
    match = _SIZE_RE.fullmatch(value) if isinstance(value, str) else None
    unit = _SIZE_UNITS.get((match[3] or "").lower()) if match is not None else None
    if match is None or unit is None or (match[2] and not match[3]):
        raise ValueError(f"invalid size {value!r}: expected {SIZE_HELP}, e.g. 1MiB")
    from decimal import Decimal  # here: loading the configuration rarely needs it

    return int(Decimal(match[1] + (match[2] or "")) * unit)


def parse_clock(text: str) -> tuple[int, int]:
    """``(hour, minute)`` of an ``HH:MM`` time of day, 00:00 to 23:59."""
    match = _CLOCK_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid time of day {text!r}: expected HH:MM from 00:00 to 23:59")
    return int(match[1]), int(match[2])


def format_bytes(n: int | float) -> str:
    """A size in IEC units: whole bytes below 1 KiB, one decimal above (never "1024.0")."""
    value, unit = float(n), 0
    while unit < len(_IEC) - 1 and round(abs(value), 1 if unit else 0) >= 1024:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {_IEC[unit]}"


@record(frozen=True)
class Startups:
    """OpenSSH's ``MaxStartups start:rate:full`` for unauthenticated SSH connections."""

    start: int
    rate: int
    full: int


def parse_startups(text: str) -> Startups:
    """``start:rate:full`` (or one number N, meaning N:100:N), as sshd_config writes it."""
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"expected start:rate:full (e.g. \"10:30:60\"), got {text!r}")
    numbers = [int(p) for p in parts]
    start, rate, full = numbers if len(numbers) == 3 else (numbers[0], 100, numbers[0])
    if not (1 <= start <= full and rate <= 100):
        raise ValueError(f"need 1 <= start <= full and rate <= 100, got {text!r}")
    return Startups(start, rate, full)
