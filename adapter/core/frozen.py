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

    The result equals ``cls(*values)`` for a frozen slotted dataclass without
    ``__post_init__`` (there is no validation to skip).
    """
    names = [f.name for f in fields(cls)]
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
