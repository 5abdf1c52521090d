"""Ready-made handlers, so ``synkafka consume`` is useful without writing code.

* :class:`JsonLinesSink` writes one JSON object per update (stream, writer, token,
  source and the rows in Synapse's wire form) to stdout or a file, flushed per line
  so a pipe reader sees rows as they are handled.
* :func:`load_handler` imports a ``module:function`` handler.
"""

from __future__ import annotations

import importlib
import json
import threading
from typing import IO, Any

from adapter.errors import ConfigError
from adapter.ports import Handler, StreamUpdate
from adapter.rows import row_to_wire

__all__ = ["JsonLinesSink", "load_handler", "update_to_json"]


def update_to_json(update: StreamUpdate) -> dict[str, Any]:
    """An update as a JSON-ready dict; rows in Synapse's wire form."""
    return {
        "stream": update.stream_name,
        "writer": update.instance_name,
        "token": update.token,
        "source": update.source,
        "rows": [row_to_wire(row) for row in update.rows],
    }


class JsonLinesSink:
    """A handler writing one JSON line per update to a text stream.

    Args:
        out: where to write (``sys.stdout`` or an open file).
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        # Stream workers run in parallel threads; lines must not interleave.
        self._lock = threading.Lock()
        self.updates = 0

    def __call__(self, update: StreamUpdate) -> None:
        """Write ``update`` as one line."""
        line = json.dumps(
            update_to_json(update), separators=(",", ":"), ensure_ascii=False
        )
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()
            self.updates += 1


def load_handler(spec: str) -> Handler:
    """Import ``module:function`` and return the function.

    Raises:
        ConfigError: the spec is malformed, the module cannot be imported, or the
            attribute is missing or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handler must be module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import handler module {module_name!r}: {exc}"
        ) from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ConfigError(f"{module_name} has no attribute {attr!r}")
    if not callable(target):
        raise ConfigError(f"handler {spec!r} is not callable")
    handler: Handler = target
    return handler
