"""The field helper every configuration section declares its keys with."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None,
            kind: str | None = None) -> Any:
    """A setting: its default, its help line and its bounds, kept in the field's metadata.

    ``kind`` names a text form the value must have (see ``config._KINDS``): ``"duration"``
    and ``"clock"`` keep the checked text (``""`` turns the setting off), as ``"startups"``
    does (``units.parse_startups``), ``"size"`` turns a size text (``"1MiB"``) into an
    ``int`` of bytes, ``"networks"`` checks a list of addresses or CIDR networks."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "choices": choices,
            "kind": kind}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)
