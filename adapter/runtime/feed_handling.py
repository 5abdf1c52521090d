"""What a feed reader does with one record: decode it, call the handler, retry.

* :func:`decode_feed_value` reads a record of ``<prefix>.feed.events`` in either of
  the feed's formats (the ``synkafka.format`` header says which; without it, the
  Avro single-object marker decides).
* :class:`HandlerCaller` calls a handler, plain or ``async``, with retries and
  backoff. Plain handlers run in the calling worker thread; ``async`` ones run on
  one event loop in a thread of its own, so many rooms' coroutines overlap there.
* :class:`FeedJsonLines` is the handler used when none is given: one JSON object
  per event, to stdout or appended to a file.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any, TypeAlias

from adapter.codec.avro_codec import decode
from adapter.core.errors import (
    AdapterError,
    ConfigError,
    DecodeError,
    SinkError,
    exception_summary,
)
from adapter.core.feed import FeedEvent, feed_event_from_json, feed_event_to_json
from adapter.io.metrics import Metrics

__all__ = [
    "FeedHandler",
    "FeedJsonLines",
    "GaveUp",
    "HandlerCaller",
    "decode_feed_value",
]

logger = logging.getLogger(__name__)

#: A feed reader's handler: called once per event, plain or ``async``.
FeedHandler: TypeAlias = Callable[[FeedEvent], Awaitable[None] | None]

#: Header naming the value's format (set by ``synkafka feed``).
_HEADER_FORMAT = "synkafka.format"
#: The first bytes of an Avro single-object encoded value.
_AVRO_MARKER = b"\xc3\x01"


def decode_feed_value(
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | str | None]]
    | Mapping[str, bytes | str | None]
    | None,
) -> FeedEvent:
    """The event a feed record holds.

    Raises:
        DecodeError: the value is not a feed event in either format.
    """
    if not value:
        raise DecodeError("an empty feed record")
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    fmt = next((v for k, v in pairs if k == _HEADER_FORMAT), None)
    if isinstance(fmt, str):
        fmt = fmt.encode()
    if fmt == b"json" or (fmt is None and not value.startswith(_AVRO_MARKER)):
        try:
            return feed_event_from_json(json.loads(value))
        except ValueError as exc:
            raise DecodeError(f"not a JSON feed event: {exc}") from exc
    decoded = decode(value)
    if not isinstance(decoded, FeedEvent):
        raise DecodeError(f"a {type(decoded).__name__}, not a feed event")
    return decoded


class GaveUp(AdapterError):
    """The handler kept failing; the record is for the dead-letter topic (or a stop)."""


class HandlerCaller:
    """Calls a handler with retries; shared by the reader's worker threads.

    Args:
        handler: the handler (plain or ``async``).
        metrics: handler time and failures are counted here.
        retries: attempts before :class:`GaveUp` is raised.
        stop: set when the reader stops; a retry wait ends then.
    """

    def __init__(
        self,
        handler: FeedHandler,
        metrics: Metrics,
        *,
        retries: int,
        stop: threading.Event,
    ) -> None:
        self._handler = handler
        self._metrics = metrics
        self._retries = retries
        self._stop = stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._loop_lock = threading.Lock()

    def __call__(self, event: FeedEvent) -> None:
        """Handle ``event``, retrying with backoff.

        Raises:
            GaveUp: every attempt failed.
            SinkError: the built-in output cannot be written (never retried).
            AdapterError: stopped while waiting to retry.
        """
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = self._handler(event)
                if result is not None and inspect.isawaitable(result):
                    self._await(result)
            except SinkError:
                raise
            except Exception as exc:
                attempt += 1
                self._metrics.feed_reader_handler_failures.inc()
                logger.warning(
                    "handler failed for event %s in %s (attempt %d/%d): %s",
                    event.event_id,
                    event.room_id,
                    attempt,
                    self._retries,
                    exception_summary(exc),
                )
                if attempt >= self._retries:
                    raise GaveUp(
                        f"handler failed {attempt} times: {exception_summary(exc)}"
                    ) from exc
                if self._stop.wait(min(5.0, 0.1 * 2**attempt)):
                    raise AdapterError(
                        "stopped while retrying a failing handler"
                    ) from exc
                continue
            self._metrics.feed_reader_handler_seconds.observe(
                time.perf_counter() - started
            )
            return

    def _await(self, awaitable: Awaitable[Any]) -> None:
        """Run a coroutine on the shared loop and wait for it in this thread."""

        async def run() -> None:
            await awaitable

        loop = self._event_loop()
        asyncio.run_coroutine_threadsafe(run(), loop).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._loop_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="synkafka-feed-async", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def close(self) -> None:
        """Stop the event loop, if one was started."""
        with self._loop_lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
            if not thread.is_alive():
                loop.close()


class FeedJsonLines:
    """A handler writing each event as one JSON line (:func:`feed_event_to_json`).

    At least once: after a crash the events handled since the last commit come
    again. Thread-safe; each line is flushed as written.

    Args:
        out: where to write.
        name: what to call it in errors.
    """

    def __init__(self, out: IO[str], name: str = "<stdout>") -> None:
        self._out = out
        self._name = name
        self._lock = threading.Lock()
        self._owned = False

    @classmethod
    def open(cls, path: str) -> FeedJsonLines:
        """Append to the file at ``path``.

        Raises:
            ConfigError: it cannot be opened for appending.
        """
        try:
            out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise ConfigError(
                f"cannot open output file {path}: {exc.strerror or exc}"
            ) from exc
        sink = cls(out, path)
        sink._owned = True
        return sink

    def __call__(self, event: FeedEvent) -> None:
        """Write one line.

        Raises:
            SinkError: the output cannot be written.
        """
        line = json.dumps(
            feed_event_to_json(event), separators=(",", ":"), ensure_ascii=False
        )
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except OSError as exc:
                raise SinkError(
                    f"cannot write to {self._name}: {exc.strerror or exc}"
                ) from exc

    def close(self) -> None:
        """Close a file opened with :meth:`open`."""
        if self._owned:
            self._out.close()
