"""``record``: ``dataclasses.dataclass`` without compiling methods for every class.

The standard library's ``dataclass`` writes the source of ``__init__``, ``__repr__``,
``__eq__`` (and, frozen, ``__setattr__``, ``__delattr__`` and ``__hash__``) for each class
and compiles it with ``exec`` when the class is defined, and importing ``dataclasses``
loads ``inspect`` (with ``ast``, ``dis`` and ``tokenize``). The forced command defines
some fifty such classes on every SSH connection, and that was the largest single part of
its start-up (bench/README.md, "The forced command's own cost"). A ``record``'s methods
are the shared ones of ``_Shared`` (positional or keyword arguments in field order,
defaults and ``default_factory``, ``__post_init__``, equality and hash by field values,
``FrozenInstanceError`` on assignment when frozen), its fields are ``fields_of(cls)``,
and it is still a dataclass to the standard library: ``dataclasses.fields``, ``asdict``,
``replace`` and ``is_dataclass`` work, ``dataclasses`` being loaded only when one of them
first asks. A field takes a default, or ``field(default_factory=..., metadata=...)``;
for anything more (``init=False``, ``InitVar``, ``kw_only``, ordering) use ``dataclass``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

_T = TypeVar("_T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # no default (``dataclasses.MISSING``'s role)


class Field:
    """One field of a record: ``field()``'s answer, then the class's entry for it."""

    __slots__ = ("default", "default_factory", "metadata", "name", "type")

    def __init__(self, default: Any, default_factory: Any,
                 metadata: dict[str, Any] | None) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.metadata: dict[str, Any] = metadata or {}


def field(*, default: Any = MISSING, default_factory: Any = MISSING,
          metadata: dict[str, Any] | None = None) -> Any:
    """A record field's default (``default``, or ``default_factory()`` per instance) and
    its ``metadata``, as ``dataclasses.field``."""
    if default is not MISSING and default_factory is not MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return Field(default, default_factory, metadata)


def fields_of(cls: type) -> tuple[Field, ...]:
    """A record class's fields in order (``dataclasses.fields`` without loading
    ``dataclasses``)."""
    return cls.__record_fields__  # type: ignore[attr-defined, no-any-return]


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
    spec: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in getattr(base, "__record_fields__", ()):
            spec[f.name] = f
    own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect is what we avoid)
    for name, kind in own.items():
        if isinstance(kind, str) and kind.replace("typing.", "").startswith("ClassVar"):
            continue
        value = cls.__dict__.get(name, MISSING)
        if type(value).__module__ == "dataclasses":
            raise TypeError(f"{cls.__name__}.{name}: a record's field is records.field "
                            "(dataclasses.field's options are not honoured)")
        f = value if isinstance(value, Field) else Field(value, MISSING, None)
        f.name, f.type = name, kind
        if f.default is not MISSING and type(f.default).__hash__ is None:
            raise ValueError(f"{cls.__name__}.{name}: mutable default "
                             f"{type(f.default).__name__}; use default_factory")
        if f.default is MISSING:
            if name in cls.__dict__:
                delattr(cls, name)
        else:
            setattr(cls, name, f.default)
        spec[name] = f
    c: Any = cls
    c.__record_fields__ = tuple(spec.values())
    c.__record_init__ = tuple(
        (f.name, f.default, None if f.default_factory is MISSING else f.default_factory)
        for f in spec.values())
    setattr(cls, "__match_args__", tuple(spec))  # noqa: B010 (mypy: a class attribute)
    c.__dataclass_fields__ = _Lazy("__dataclass_fields__")
    c.__dataclass_params__ = _Lazy("__dataclass_params__")
    for name in ("__init__", "__repr__", "__eq__"):
        setattr(cls, name, getattr(_Shared, name))
    if frozen:
        for name in ("__hash__", "__setattr__", "__delattr__"):
            setattr(cls, name, getattr(_Shared, name))
    else:
        c.__hash__ = None  # as dataclass's eq=True
    return cls


class _Lazy:
    """``dataclasses``' own description of a record, made when first asked for (by
    ``dataclasses.fields``, ``asdict``, ``replace`` or ``is_dataclass``): the same fields
    given to ``dataclass(init=False, repr=False, eq=False)`` on a stand-in class."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: object, owner: type) -> Any:
        import dataclasses

        ns: dict[str, Any] = {"__annotations__": {}, "__doc__": owner.__name__}
        for f in fields_of(owner):
            ns["__annotations__"][f.name] = f.type
            if f.default_factory is not MISSING:
                ns[f.name] = dataclasses.field(default_factory=f.default_factory,
                                               metadata=f.metadata)
            elif f.default is not MISSING:
                ns[f.name] = dataclasses.field(default=f.default, metadata=f.metadata)
            else:
                ns[f.name] = dataclasses.field(metadata=f.metadata)
        stand_in: Any = dataclasses.dataclass(init=False, repr=False, eq=False)(
            type(owner.__name__, (), ns))
        for attr in ("__dataclass_fields__", "__dataclass_params__"):
            setattr(owner, attr, getattr(stand_in, attr))
        return getattr(owner, self.attr)


class _Shared:
    __record_init__: tuple[tuple[str, Any, Any], ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        spec = self.__record_init__
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
        return tuple(getattr(self, name) for name, _, _ in self.__record_init__)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}"
                          for name, _, _ in self.__record_init__)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _Shared._values(self) == _Shared._values(other)

    def __hash__(self) -> int:
        return hash(_Shared._values(self))

    def __setattr__(self, name: str, value: Any) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        from dataclasses import FrozenInstanceError

        raise FrozenInstanceError(f"cannot delete field {name!r}")
