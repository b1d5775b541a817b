"""``record``: ``dataclasses.dataclass`` without compiling methods for every class.

The standard library's ``dataclass`` writes the source of ``__init__``, ``__repr__``,
``__eq__`` (and, frozen, ``__setattr__``, ``__delattr__`` and ``__hash__``) for each class
and compiles it with ``exec`` when the class is defined. The forced command defines some
fifty such classes on every SSH connection, and that compilation was the largest single
part of its start-up (bench/README.md, "The forced command's own cost"). A ``record`` is
still a real dataclass (``dataclasses.fields``, ``asdict``, ``replace`` and
``is_dataclass`` work) whose methods are the shared ones of ``_Shared``: positional or
keyword arguments in field order, defaults and default factories, ``__post_init__``,
equality and hash by field values, and ``FrozenInstanceError`` on assignment when frozen.
Field options beyond a default (``init=False``, ``InitVar``, ``kw_only``) are refused:
use ``dataclass`` for those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, FrozenInstanceError, dataclass, field, fields
from typing import Any, TypeVar, cast, dataclass_transform, overload

_T = TypeVar("_T")


@overload
@dataclass_transform(field_specifiers=(field,))
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, frozen: bool = False) -> Callable[[type[_T]], type[_T]]: ...


def record(cls: type[_T] | None = None, /, *,
           frozen: bool = False) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """``@record`` or ``@record(frozen=True)``, as ``@dataclass`` and
    ``@dataclass(frozen=True)``."""
    if cls is None:
        return lambda c: make(c, frozen=frozen)
    return make(cls, frozen=frozen)


def make(cls: type[_T], *, frozen: bool) -> type[_T]:
    """``cls`` as a record (``record``'s body; ``config.declare.section`` calls it too)."""
    if not cls.__doc__:
        cls.__doc__ = cls.__name__  # else dataclass asks inspect.signature for one
    done = dataclass(init=False, repr=False, eq=False)(cls)
    spec = []
    for f in fields(cast(Any, done)):
        if not f.init or f.kw_only is True:
            raise TypeError(f"{cls.__name__}.{f.name}: a record field takes only a default; "
                            "use dataclass")
        spec.append((f.name, f.default,
                     None if f.default_factory is MISSING else f.default_factory))
    done.__record_fields__ = tuple(spec)  # type: ignore[attr-defined]
    for name in ("__init__", "__repr__", "__eq__"):
        setattr(done, name, getattr(_Shared, name))
    if frozen:
        for name in ("__hash__", "__setattr__", "__delattr__"):
            setattr(done, name, getattr(_Shared, name))
    else:
        done.__hash__ = None  # type: ignore[assignment]  # as dataclass's eq=True
    return done


class _Shared:
    __record_fields__: tuple[tuple[str, Any, Any], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = self.__record_fields__
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
        if post_init is not None:
            post_init()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _, _ in self.__record_fields__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}"
                          for name, _, _ in self.__record_fields__)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _Shared._values(self) == _Shared._values(other)

    def __hash__(self) -> int:
        return hash(_Shared._values(self))

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
