"""Building frozen slotted dataclasses on hot paths without their ``__init__``.

A frozen dataclass' ``__init__`` stores every field through ``object.__setattr__``;
setting the slots through their member descriptors costs about a third of that.
The codec (one command per record) and the consumer (one update per record) build
their instances this way. It does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

__all__ = ["frozen_maker"]


def frozen_maker(cls: type[Any]) -> Callable[..., Any]:
    """Generate ``make(*values)`` that builds ``cls`` with the fields in order.

    The result equals ``cls(*values)``: skipping ``__init__`` is only sound when it
    does nothing but store the fields, so ``cls`` must be a slotted dataclass without
    ``__post_init__`` (checked here, once).

    Raises:
        TypeError: ``cls`` is not a dataclass, has no slots, or has a
            ``__post_init__`` (whose checks or derived fields ``make`` would skip).
    """
    names = [f.name for f in fields(cls)]  # TypeError for a class that is no dataclass
    if hasattr(cls, "__post_init__"):
        raise TypeError(
            f"frozen_maker({cls.__name__}): it has a __post_init__, which make() "
            "would skip; build it with its __init__"
        )
    if "__slots__" not in cls.__dict__:
        raise TypeError(
            f"frozen_maker({cls.__name__}): it is not slotted (@dataclass(slots=True))"
        )
    namespace: dict[str, Any] = {"cls": cls, "_new": object.__new__}
    for i, n in enumerate(names):
        # The slot's member descriptor, found through the MRO.
        namespace[f"_set{i}"] = getattr(cls, n).__set__
    args = ", ".join(f"v{i}" for i in range(len(names)))
    sets = "".join(f"    _set{i}(obj, v{i})\n" for i in range(len(names)))
    source = f"def make({args}):\n    obj = _new(cls)\n{sets}    return obj\n"
    # Generated once per class from field names we control, as dataclasses does.
    exec(compile(source, f"<make {cls.__name__}>", "exec"), namespace)  # noqa: S102
    maker: Callable[..., Any] = namespace["make"]
    return maker
