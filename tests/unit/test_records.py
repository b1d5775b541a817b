"""``records.record``: a dataclass whose methods are shared, not compiled per class."""

from __future__ import annotations

import dataclasses

import pytest

from xsbackup.records import field, fields_of, record


@record
class Mutable:
    name: str
    tags: list[str] = field(default_factory=list)
    size: int = 0


@record(frozen=True)
class Frozen:
    a: int
    b: str = "x"

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError("a must not be negative")


def test_a_mutable_record_is_a_dataclass_with_dataclass_semantics() -> None:
    m = Mutable("n", size=3)
    assert dataclasses.is_dataclass(m)
    assert dataclasses.asdict(m) == {"name": "n", "tags": [], "size": 3}
    assert m.tags is not Mutable("n").tags
    m.size = 4
    assert m == Mutable("n", [], 4)
    assert m != Mutable("n", [], 5)
    assert repr(m) == "Mutable(name='n', tags=[], size=4)"
    with pytest.raises(TypeError):
        hash(m)  # eq without frozen: unhashable, as @dataclass
    assert dataclasses.replace(m, name="o").name == "o"
    assert [f.name for f in fields_of(Mutable)] == ["name", "tags", "size"]
    assert [f.name for f in dataclasses.fields(Mutable)] == ["name", "tags", "size"]


def test_a_frozen_record_refuses_assignment_and_hashes_by_value() -> None:
    f = Frozen(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.a = 2  # type: ignore[misc]
    assert hash(f) == hash(Frozen(1, "x"))
    assert {f, Frozen(1)} == {f}
    with pytest.raises(ValueError, match="negative"):
        Frozen(-1)


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="missing argument 'name'"):
        Mutable()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="takes 3 arguments"):
        Mutable("n", [], 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nme'"):
        Mutable("n", nme="n")  # type: ignore[call-arg]


def test_a_field_option_it_cannot_honour_is_refused() -> None:
    with pytest.raises(TypeError, match=r"records\.field"):
        @record
        class Bad:
            x: int = dataclasses.field(default=0, init=False)


def test_a_mutable_default_is_refused() -> None:
    with pytest.raises(ValueError, match="default_factory"):
        @record
        class Bad:
            x: list[int] = []  # noqa: RUF012
