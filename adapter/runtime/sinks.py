"""Ready-made handlers, so ``synkafka consume`` is useful without writing code.

* :class:`JsonLinesSink` writes one JSON object per update (stream, writer, token,
  source and the rows in Synapse's wire form) to stdout or a file, flushed per line
  so a pipe reader sees rows as they are handled. Written to a regular file
  (:meth:`JsonLinesSink.open`), it is exactly-once across restarts: see there.
* :func:`load_handler` imports a ``module:function`` handler.
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from adapter.core.errors import ConfigError, SinkError, exception_summary
from adapter.core.ports import Handler, StreamUpdate
from adapter.core.rows import row_to_wire

__all__ = ["JsonLinesSink", "load_handler", "read_json_lines_tail", "update_to_json"]

#: The start of every line :class:`JsonLinesSink` writes (``update_to_json``'s key
#: order), so resuming a large file does not parse every line's rows.
_LINE_HEAD = re.compile(
    rb'\{"stream":"([^"\\]*)","writer":"([^"\\]*)","token":(-?[0-9]+),'
)


def update_to_json(update: StreamUpdate) -> dict[str, Any]:
    """An update as a JSON-ready dict; rows in Synapse's wire form."""
    return {
        "stream": update.stream_name,
        "writer": update.instance_name,
        "token": update.token,
        "source": update.source,
        "rows": [row_to_wire(row) for row in update.rows],
    }


def _line_key(line: bytes) -> tuple[str, str, int] | None:
    """``(stream, writer, token)`` of one of our lines, or None if it is not one."""
    match = _LINE_HEAD.match(line)
    if match is not None:
        return match[1].decode(), match[2].decode(), int(match[3])
    try:  # names with escapes: the slow way
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    stream, writer, token = obj.get("stream"), obj.get("writer"), obj.get("token")
    if (
        isinstance(stream, str)
        and isinstance(writer, str)
        and isinstance(token, int)
        and not isinstance(token, bool)
    ):
        return stream, writer, token
    return None


def read_json_lines_tail(path: Path) -> tuple[dict[tuple[str, str], int], int]:
    """What a JSON-lines output file already holds, to resume it exactly once.

    Returns:
        The last token per (stream, writer) in the file, and the length of its
        complete lines (a last line without a newline was cut by a kill).

    Raises:
        ConfigError: the file cannot be read, or a complete line is not one this
            sink wrote (it is not ours to append to).
    """
    last: dict[tuple[str, str], int] = {}
    end = 0
    try:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break
                if line.strip():
                    key = _line_key(line)
                    if key is None:
                        raise ConfigError(
                            f"output file {path}: line {number} is not a synkafka "
                            "JSON line; refusing to append to it"
                        )
                    last[key[0], key[1]] = key[2]
                end += len(line)
    except OSError as exc:
        raise ConfigError(f"cannot read output file {path}: {exc.strerror}") from exc
    return last, end


def _write_all(raw: io.FileIO, data: bytes) -> None:
    """Write every byte with unbuffered writes (a write may be short)."""
    view = memoryview(data)
    while view:
        written = raw.write(view)
        if not written:
            raise OSError(errno.EIO, "nothing written")
        view = view[written:]


class JsonLinesSink:
    """A handler writing one JSON line per update.

    Every update is one line, holding all rows of one (stream, writer, token), so
    ``(stream, writer, token)`` is the key of a line.

    Args:
        out: where to write (``sys.stdout`` or an open text file). Written this way,
            the sink is at-least-once: after a crash, the updates handled after the
            last commit are written again.
        skip: per (stream, writer), the last token the output already holds; updates
            at or below it are not written again (see :meth:`open`).
    """

    def __init__(
        self,
        out: IO[str] | None,
        *,
        skip: Mapping[tuple[str, str], int] | None = None,
        name: str = "<stdout>",
    ) -> None:
        self._out = out
        self._raw: io.FileIO | None = None
        self._regular = False
        self._name = name
        # Stream workers run in parallel threads; lines must not interleave.
        self._lock = threading.Lock()
        self._skip = dict(skip or {})
        self._failed: SinkError | None = None
        self.updates = 0
        self.skipped = 0

    @classmethod
    def open(cls, path: Path) -> JsonLinesSink:
        """Append to ``path``, resuming what an earlier run of the sink wrote.

        Exactly-once: a regular file is read back first. A last line cut by a kill is
        removed, and for each (stream, writer) updates at or below the file's last
        token are skipped until one above it arrives. The consumer delivers each
        writer's updates in token order, and re-delivers after a crash only what
        followed its last commit, so this drops exactly the updates already in the
        file. With :meth:`sync` called before each commit, the file also holds every
        committed update after a power loss. Each line is written with one
        unbuffered write, so a kill leaves at most one partial line.

        Other files (``/dev/stdout``, a pipe, a device) are only appended to.

        Raises:
            ConfigError: the path cannot be opened for writing (a missing directory,
                a directory, no permission), or the file holds lines that are not
                ours.
        """
        try:
            raw = io.FileIO(path, "a+")
        except OSError as exc:
            raise ConfigError(
                f"cannot open output file {path}: {exc.strerror or exc}"
            ) from exc
        try:
            regular = stat.S_ISREG(os.fstat(raw.fileno()).st_mode)
            skip: dict[tuple[str, str], int] = {}
            if regular:
                skip, end = read_json_lines_tail(path)
                if raw.seek(0, os.SEEK_END) > end:
                    raw.truncate(end)
        except OSError as exc:
            raw.close()
            raise ConfigError(
                f"cannot resume output file {path}: {exc.strerror or exc}"
            ) from exc
        except ConfigError:
            raw.close()
            raise
        sink = cls(None, skip=skip, name=str(path))
        sink._raw = raw
        sink._regular = regular
        return sink

    def __call__(self, update: StreamUpdate) -> None:
        """Write ``update`` as one line (unless the output already holds it).

        Raises:
            SinkError: the output cannot be written; nothing is written after it.
        """
        line = json.dumps(
            update_to_json(update), separators=(",", ":"), ensure_ascii=False
        )
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._skip:
                key = (update.stream_name, update.instance_name)
                last = self._skip.get(key)
                if last is not None:
                    if update.token <= last:
                        self.skipped += 1
                        return
                    # Past what the file holds: from here on the consumer's own
                    # order (each update once per run) is enough.
                    del self._skip[key]
            try:
                if self._raw is not None:
                    _write_all(self._raw, (line + "\n").encode())
                elif self._out is not None:
                    self._out.write(line + "\n")
                    self._out.flush()
            except OSError as exc:
                # A partial line may be in the file: write nothing after it.
                self._failed = SinkError(
                    f"cannot write to {self._name}: {exc.strerror or exc}"
                )
                raise self._failed from exc
            self.updates += 1

    def sync(self) -> None:
        """Make what was written durable (fsync a regular file); call before a commit.

        Raises:
            SinkError: the file cannot be synced.
        """
        if self._raw is None or not self._regular:
            return
        with self._lock:
            try:
                os.fsync(self._raw.fileno())
            except OSError as exc:
                raise SinkError(
                    f"cannot sync {self._name}: {exc.strerror or exc}"
                ) from exc

    def close(self) -> None:
        """Close a file opened with :meth:`open` (a no-op for a text stream)."""
        if self._raw is not None:
            self._raw.close()


def load_handler(spec: str) -> Handler:
    """Import ``module:function`` and return the function.

    Raises:
        ConfigError: the spec is malformed, the module cannot be imported, or the
            attribute is missing or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handler must be module:function, got {spec!r}")
    # As `python -m` and most plugin loaders do: a module in the working folder counts.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import handler module {module_name!r}: {exc}"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"handler module {module_name!r} failed to load: {exception_summary(exc)}"
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
