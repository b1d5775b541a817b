"""The field helper every configuration section declares its keys with, and the
decorator that makes a section a frozen dataclass without generating code for it."""

from __future__ import annotations

from dataclasses import MISSING, FrozenInstanceError, dataclass, field, fields
from typing import Any, TypeVar, cast, dataclass_transform

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
    """``@dataclass(frozen=True)`` for a configuration section, at a fraction of its cost.

    The class is a real dataclass (``dataclasses.fields``, ``asdict`` and ``replace``
    work), but its ``__init__``, ``__repr__``, ``__eq__``, ``__hash__`` and frozen
    ``__setattr__``/``__delattr__`` are the shared ones below, not methods the standard
    library compiles anew for every class: the forced command loads every section on
    every SSH connection, and that compilation was a fifth of its start-up
    (bench/README.md, "The forced command's own cost")."""
    if not cls.__doc__:
        cls.__doc__ = cls.__name__  # else dataclass asks inspect.signature for one
    done = dataclass(init=False, repr=False, eq=False)(cls)
    done.__section_fields__ = tuple(  # type: ignore[attr-defined]
        (f.name, f.default, None if f.default_factory is MISSING else f.default_factory)
        for f in fields(cast(Any, done)))
    for name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__",
                 "__delattr__"):
        setattr(done, name, getattr(_Frozen, name))
    return done


class _Frozen:
    """The methods every ``section`` class shares (as ``dataclass(frozen=True)`` makes
    them: keyword or positional arguments in field order, defaults, ``__post_init__``,
    equality and hash
    by field values, ``FrozenInstanceError`` on assignment)."""

    __section_fields__: tuple[tuple[str, Any, Any], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = self.__section_fields__
        if len(args) > len(spec):
            raise TypeError(f"{type(self).__name__}() takes {len(spec)} arguments, "
                            f"{len(args)} given")
        for i, (name, default, factory) in enumerate(spec):
            if i < len(args):
                if name in kwargs:
                    raise TypeError(f"{type(self).__name__}() got multiple values for "
                                    f"{name!r}")
                value = args[i]
            elif name in kwargs:
                value = kwargs.pop(name)
            elif factory is not None:
                value = factory()
            elif default is MISSING:
                raise TypeError(f"{type(self).__name__}() missing argument {name!r}")
            else:
                value = default
            object.__setattr__(self, name, value)
        if kwargs:
            raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument "
                            f"{next(iter(kwargs))!r}")
        post_init = getattr(self, "__post_init__", None)
        if post_init is not None:  # a section's own cross-key checks
            post_init()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _, _ in self.__section_fields__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}"
                          for name, _, _ in self.__section_fields__)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _Frozen._values(self) == _Frozen._values(other)

    def __hash__(self) -> int:
        return hash(_Frozen._values(self))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
