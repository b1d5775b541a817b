"""The field helper every configuration section declares its keys with, and the
decorator that makes a section a frozen dataclass without generating code for it."""

from __future__ import annotations

from typing import Any, TypeVar, dataclass_transform

from xsbackup.records import field, make

_T = TypeVar("_T")


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



@dataclass_transform(frozen_default=True, field_specifiers=(field, setting))
def section(cls: type[_T]) -> type[_T]:
    """``@dataclass(frozen=True)`` for a configuration section, without the methods the
    standard library compiles for every class (``records.record``): the forced command
    loads every section on every SSH connection."""
    return make(cls, frozen=True)
