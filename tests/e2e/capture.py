"""Record a homeserver's Redis replication traffic, as an outside subscriber would.

:class:`RedisCapture` subscribes with redis-py to exactly the two channels Synapse
uses, ``<server_name>`` and ``<server_name>/USER_IP``, and keeps every message as a
:class:`CapturedLine` with the time it arrived. Tests wait on it with
:meth:`RedisCapture.wait_for` (a deadline, never a sleep).

:func:`mask_line` and :func:`format_line` turn captured lines into the recorded test
data under ``tests/data/synapse_lines/``: ``USER_IP`` carries a live access token,
which is replaced with a fake of the same shape.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis

from adapter.devstack.services._process import poll_until

__all__ = [
    "CapturedLine",
    "RedisCapture",
    "count_kinds",
    "format_line",
    "mask_access_token",
    "mask_line",
]

_POLL_S = 0.1


@dataclass(frozen=True)
class CapturedLine:
    """One Redis message.

    Attributes:
        channel: the channel it was published on.
        line: the payload, decoded as UTF-8 (one replication command).
        received: ``time.time()`` when the subscriber got it.
    """

    channel: str
    line: str
    received: float

    @property
    def command(self) -> str:
        """The command name: the payload up to the first space."""
        return self.line.split(" ", 1)[0]

    @property
    def kind(self) -> str:
        """``"RDATA <stream>"``, ``"POSITION <stream>"`` or just the command name."""
        parts = self.line.split(" ", 2)
        if parts[0] in {"RDATA", "POSITION"} and len(parts) > 1:
            return f"{parts[0]} {parts[1]}"
        return parts[0]

    def rdata(self) -> tuple[str, str, str, Any]:
        """Split an RDATA line into ``(stream, instance, token, row)``."""
        name, stream, instance, token, row = self.line.split(" ", 4)
        if name != "RDATA":
            raise ValueError(f"not an RDATA line: {self.line!r}")
        return stream, instance, token, json.loads(row)


def count_kinds(lines: Iterable[CapturedLine]) -> Counter[str]:
    """Count lines by :attr:`CapturedLine.kind`."""
    return Counter(line.kind for line in lines)


class RedisCapture:
    """Subscribe to a homeserver's two channels and keep every message.

    Start it before Synapse to see the startup burst (``REPLICATE`` and the
    ``POSITION`` of every stream).

    Args:
        redis_url: the Redis Synapse replicates over.
        server_name: the homeserver's ``server_name`` (its channel name).
    """

    def __init__(self, redis_url: str, server_name: str) -> None:
        self.server_name = server_name
        self.channels = (server_name, f"{server_name}/USER_IP")
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        self._lines: list[CapturedLine] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        """Connection errors the loop survived (redis-py re-subscribes by itself)."""

    def start(self) -> Self:
        """Subscribe, wait for both confirmations, then record in a thread."""
        self._pubsub.subscribe(*self.channels)
        confirmed: set[str] = set()

        def check() -> bool | None:
            message = self._pubsub.get_message(timeout=_POLL_S)
            if message is not None and message["type"] == "subscribe":
                confirmed.add(message["channel"].decode())
            return True if confirmed == set(self.channels) else None

        poll_until(check, timeout_s=10, interval_s=0, what="redis subscription")
        self._thread = threading.Thread(
            target=self._run, name=f"capture {self.server_name}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL_S
                )
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.errors.append(repr(exc))
                self._stop.wait(_POLL_S)  # back off; redis-py reconnects on next call
                continue
            if message is None or message["type"] != "message":
                continue
            line = CapturedLine(
                channel=message["channel"].decode(),
                line=message["data"].decode("utf-8"),
                received=time.time(),
            )
            with self._lock:
                self._lines.append(line)

    def lines(self) -> list[CapturedLine]:
        """A snapshot of everything received so far, in arrival order."""
        with self._lock:
            return list(self._lines)

    def wait_for(
        self,
        predicate: Callable[[CapturedLine], bool],
        *,
        timeout_s: float = 30.0,
        what: str,
        after: int = 0,
    ) -> CapturedLine:
        """Return the first line (from index ``after`` on) matching ``predicate``.

        Raises:
            TimeoutError: none arrived within ``timeout_s``; the message lists the
                kinds that did arrive.
        """

        def check() -> CapturedLine | None:
            with self._lock:
                found = (ln for ln in self._lines[after:] if predicate(ln))
                return next(found, None)

        try:
            return poll_until(check, timeout_s=timeout_s, interval_s=0.02, what=what)
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc}; got {dict(count_kinds(self.lines()))}"
            ) from None

    def close(self) -> None:
        """Stop the thread and unsubscribe."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pubsub.close()
        self._client.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_LIVE_TOKEN_RE = re.compile(r"syt_(?!masked_)")


def mask_access_token(token: str) -> str:
    """Replace a Synapse access token with a fixed fake of the same shape.

    Synapse tokens are ``syt_<base64 localpart>_<20 random>_<6 base62 CRC>``; the
    fake keeps the number and length of the last two parts:
    ``syt_masked_xxxxxxxxxxxxxxxxxxxx_000000``.
    """
    head, sep, rest = token.rpartition("_")
    random_part = head.rpartition("_")[2] if sep else ""
    if not head.startswith("syt_") or not random_part:
        return "syt_masked_" + "x" * 20 + "_000000"
    return f"syt_masked_{'x' * len(random_part)}_{'0' * len(rest)}"


def mask_line(line: str) -> str:
    """Mask the access token of a ``USER_IP`` line; other lines pass unchanged.

    ``USER_IP <user_id> <json [access_token, ip, user_agent, device_id, last_seen]>``.
    The token is replaced in the text, so the rest of the payload keeps Synapse's
    exact bytes.
    """
    if not line.startswith("USER_IP "):
        return line
    token = json.loads(line.split(" ", 2)[2])[0]
    return line.replace(token, mask_access_token(token))


def format_line(line: CapturedLine) -> str:
    r"""Return ``<channel>\t<masked payload>``, the recorded-data line format.

    Raises:
        ValueError: a live-looking access token survived masking.
    """
    masked = mask_line(line.line)
    if _LIVE_TOKEN_RE.search(masked):
        raise ValueError(f"unmasked access token in a {line.channel} line")
    return f"{line.channel}\t{masked}"
