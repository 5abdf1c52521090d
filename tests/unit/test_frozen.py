"""frozen_maker: builds what the dataclass' __init__ builds, and refuses what it cannot."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from adapter.core.frozen import frozen_maker


@dataclass(frozen=True, slots=True)
class _Base:
    a: int
    b: str | None


@dataclass(frozen=True, slots=True)
class _Child(_Base):
    c: tuple[int, ...] = ()


def test_make_equals_init_including_inherited_slots() -> None:
    made = frozen_maker(_Child)(1, None, (2, 3))

    assert made == _Child(1, None, (2, 3))
    assert type(made) is _Child
    with pytest.raises(FrozenInstanceError):
        made.a = 2  # type: ignore[misc]


def test_a_post_init_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError(self.a)

    with pytest.raises(TypeError, match=r"Checked\): it has a __post_init__"):
        frozen_maker(Checked)


def test_an_inherited_post_init_is_refused() -> None:
    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Sub(Checked):
        b: int

    with pytest.raises(TypeError, match="__post_init__"):
        frozen_maker(Sub)


def test_a_class_without_slots_is_refused() -> None:
    @dataclass(frozen=True)
    class Plain:
        a: int = 0

    with pytest.raises(TypeError, match=r"Plain\): it is not slotted"):
        frozen_maker(Plain)


def test_a_class_that_is_no_dataclass_is_refused() -> None:
    class NotADataclass:
        __slots__ = ("a",)

    with pytest.raises(TypeError):
        frozen_maker(NotADataclass)
