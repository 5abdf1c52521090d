"""Follows a Synapse homeserver's Redis replication channels.

Synapse publishes every replication command as one line on the channel
``<server_name>`` and USER_IP alone on ``<server_name>/USER_IP`` (Synapse's Redis transport). This
subscribes to exactly those two (a pattern would also match other homeservers whose
names share the prefix), yields each line with the time it arrived, and after every
(re)connect publishes ``REPLICATE`` so every Synapse instance re-announces its
positions: the only command synkafka ever writes into Synapse's Redis.

Pub/sub loses whatever is published while the connection is down; the caller learns
of each (re)subscribe (a :class:`RedisMessage` with ``reconnected``) so it can check
for gaps. For that reason the subscription never reconnects behind the caller's back
(redis-py's ``PubSub`` silently re-subscribes after a failure, which would hide the
gap): the subscribed connection is a plain socket that speaks just enough RESP for
``AUTH``, ``SUBSCRIBE``, ``PING`` and pushed messages. It also reads a whole socket
buffer of messages per system call, several times faster than redis-py's
``get_message`` (see docs/benchmarks.md, "Bridge"). ``REPLICATE`` goes out over a
separate, ordinary redis-py connection, because a subscribed connection cannot
publish.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis
from redis.exceptions import RedisError

from adapter.core.backoff import Backoff
from adapter.core.config import redact_url
from adapter.core.errors import ConfigError
from adapter.core.logdedup import DEFAULT_INTERVAL_S, LogDeduplicator

_hiredis: ModuleType | None
try:
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - a dependency; the Python parser remains
    _hiredis = None

__all__ = [
    "CLIENT_NAME",
    "REPLICATE_LINE",
    "RedisMessage",
    "ReplicationSubscriber",
    "RespError",
]

logger = logging.getLogger(__name__)

#: The subscribed connection's ``CLIENT SETNAME`` (shown by ``CLIENT LIST``).
CLIENT_NAME: Final = "synkafka-bridge"
#: Synapse's ``REPLICATE`` line as Synapse itself writes it (trailing space).
REPLICATE_LINE: Final = "REPLICATE "
# How long one read may wait for data before the caller gets an idle tick.
_DEFAULT_IDLE_S: Final = 0.05
# Redis PING on the subscribed connection when it was silent this long; a dead
# connection (no RST seen) is then noticed within two intervals, as Synapse does.
_PING_INTERVAL_S: Final = 30.0
_RECV_BYTES: Final = 1 << 18


class RespError(RedisError):
    """The Redis server answered with an error or broke the protocol."""


@dataclass(frozen=True, slots=True)
class RedisMessage:
    """One line from Synapse, or a reconnect marker.

    Attributes:
        channel: the channel it came from (empty for a reconnect marker).
        line: the command line (empty for a reconnect marker).
        received_s: ``time.monotonic()`` when it was read from the socket.
        reconnected: True for the marker yielded after each (re)subscribe, before
            any line of the new subscription.
    """

    channel: str
    line: str
    received_s: float
    reconnected: bool = False


@dataclass(frozen=True, slots=True)
class _Endpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool


def _endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ConfigError(
            f"Redis URL must start with redis:// or rediss://, got {parts.scheme}://"
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ConfigError("invalid port in the Redis URL") from exc
    return _Endpoint(
        host=parts.hostname or "127.0.0.1",
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
    )


def _command(*args: str) -> bytes:
    """One RESP request (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


# A parsed RESP value in subscribed mode: bulk strings, integers, simple strings,
# errors and arrays of those.
_Resp = bytes | int | str | RespError | None | list["_Resp"]


class _RespReader:
    """Incremental RESP2 parser for the frames a subscribed connection receives.

    Uses hiredis' C reader when it is installed (a dependency; at 20,000 lines/s
    the pure-Python parser below cost a tenth of the bridge's time) and the parser
    below otherwise. Simple strings come back as ``bytes`` from hiredis and as
    ``str`` from ours; nothing here depends on which.
    """

    __slots__ = ("_buf", "_fast", "_pos")

    def __init__(self, *, use_hiredis: bool = True) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._fast: Any = (
            _hiredis.Reader(protocolError=RespError, replyError=RespError)
            if use_hiredis and _hiredis is not None
            else None
        )

    def feed(self, data: bytes | memoryview) -> None:
        if self._fast is not None:
            self._fast.feed(data)
            return
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def messages(self) -> Iterator[_Resp]:
        """Every complete frame in the buffer, in order."""
        fast = self._fast
        if fast is not None:
            while True:
                frame = fast.gets()
                if frame is False:
                    return
                yield frame
        while True:
            parsed = self._value(self._pos)
            if parsed is None:
                return
            value, self._pos = parsed
            yield value

    def _value(self, pos: int) -> tuple[_Resp, int] | None:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None
        kind = buf[pos]
        if kind == 0x24:  # '$' bulk string
            size = int(buf[pos + 1 : end])
            if size < 0:
                return None, end + 2
            start = end + 2
            stop = start + size
            if len(buf) < stop + 2:
                return None
            return bytes(buf[start:stop]), stop + 2
        if kind == 0x2A:  # '*' array
            count = int(buf[pos + 1 : end])
            items: list[_Resp] = []
            at = end + 2
            for _ in range(count):
                parsed = self._value(at)
                if parsed is None:
                    return None
                item, at = parsed
                items.append(item)
            return items, at
        if kind == 0x3A:  # ':' integer
            return int(buf[pos + 1 : end]), end + 2
        if kind == 0x2B:  # '+' simple string
            return buf[pos + 1 : end].decode(), end + 2
        if kind == 0x2D:  # '-' error
            return RespError(buf[pos + 1 : end].decode("utf-8", "replace")), end + 2
        raise RespError(f"unexpected RESP type byte {kind:#x}")


class ReplicationSubscriber:
    """Subscribes to a homeserver's replication channels, reconnecting with backoff.

    Args:
        url: ``redis://[user:password@]host:port[/db]`` or ``rediss://`` for TLS
            (the system's CA store verifies the server). The database number does
            not matter: pub/sub ignores it.
        server_name: the homeserver's ``server_name`` (the channel prefix).
        backoff: the reconnect schedule (Synapse's own is 1 s growing to 5 s).
        connect_timeout_s: how long connecting and subscribing may take.
        outage_log_interval_s: while Redis stays down, the least time between two
            warnings about it (the first failure is logged at once).

    Raises:
        ConfigError: an invalid server name or URL.
    """

    def __init__(
        self,
        url: str,
        server_name: str,
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 10.0,
        outage_log_interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        if not server_name or any(c.isspace() for c in server_name):
            raise ConfigError(f"invalid server name {server_name!r}")
        self.channels = (server_name, f"{server_name}/USER_IP")
        self._channel_names: dict[bytes, str] = {}
        self._url = url
        self._endpoint = _endpoint(url)
        self._server_name = server_name
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=5.0)
        self._connect_timeout_s = connect_timeout_s
        self.connects = 0
        """Successful subscribes so far (the first one included)."""
        self.connected = False
        """Whether the subscription is up now."""
        self.last_error = ""
        """The last connection failure, with any password removed."""
        self._outage_log_interval_s = outage_log_interval_s
        self._outage_log = LogDeduplicator(interval_s=outage_log_interval_s)
        self._down_since: float | None = None
        self._failed_attempts = 0

    # -- connecting ---------------------------------------------------------------

    def _open_socket(self) -> socket.socket:
        ep = self._endpoint
        sock = socket.create_connection(
            (ep.host, ep.port), timeout=self._connect_timeout_s
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.tls:
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=ep.host)
        except (OSError, ssl.SSLError):
            sock.close()
            raise
        return sock

    def _request(
        self, sock: socket.socket, reader: _RespReader, *args: str
    ) -> list[_Resp]:
        """Send one command and read until at least one frame arrived."""
        sock.sendall(_command(*args))
        return self._read_frames(sock, reader, 1)

    def _read_frames(
        self, sock: socket.socket, reader: _RespReader, wanted: int
    ) -> list[_Resp]:
        frames: list[_Resp] = []
        while len(frames) < wanted:
            data = sock.recv(_RECV_BYTES)
            if not data:
                raise RespError("Redis closed the connection")
            reader.feed(data)
            frames.extend(reader.messages())
        return frames

    def _subscribe(self) -> tuple[socket.socket, _RespReader]:
        """Connect, authenticate and subscribe; wait for both confirmations."""
        sock = self._open_socket()
        reader = _RespReader()
        try:
            self._handshake(sock, reader)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, reader

    def _handshake(self, sock: socket.socket, reader: _RespReader) -> None:
        ep = self._endpoint
        if ep.password is not None:
            auth = (ep.username, ep.password) if ep.username else (ep.password,)
            reply = self._request(sock, reader, "AUTH", *auth)[0]
            if isinstance(reply, RespError):
                # The server's message names no secret; ours names none either. A
                # refused password stays refused: a configuration error, not retried.
                raise ConfigError(
                    f"Redis at {redact_url(self._url)} refused the credentials: {reply}"
                )
        reply = self._request(sock, reader, "CLIENT", "SETNAME", CLIENT_NAME)[0]
        if isinstance(reply, RespError):
            if str(reply).startswith("NOAUTH"):
                raise ConfigError(
                    f"Redis at {redact_url(self._url)} needs a password "
                    "(in the URL, or --redis-password-file)"
                )
            raise RespError(f"CLIENT SETNAME failed: {reply}")
        sock.sendall(_command("SUBSCRIBE", *self.channels))
        # Both confirmations before REPLICATE, or the POSITION answers could be
        # published before we listen (matrix-org/synapse#7427).
        confirmed = 0
        for frame in self._read_frames(sock, reader, len(self.channels)):
            if isinstance(frame, RespError):
                raise RespError(f"SUBSCRIBE failed: {frame}")
            if isinstance(frame, list) and frame and frame[0] == b"subscribe":
                confirmed += 1
        if confirmed < len(self.channels):
            raise RespError("SUBSCRIBE was not confirmed")

    def publish_replicate(self) -> None:
        """Publish ``REPLICATE`` on the main channel over a short-lived connection.

        Raises:
            RedisError: Redis could not be reached.
            OSError: the network failed.
        """
        client = redis.Redis.from_url(
            self._url,
            socket_timeout=self._connect_timeout_s,
            socket_connect_timeout=self._connect_timeout_s,
        )
        try:
            client.publish(self._server_name, REPLICATE_LINE)
        finally:
            client.close()

    # -- reading ------------------------------------------------------------------

    def messages(
        self, stop: threading.Event, *, idle_s: float = _DEFAULT_IDLE_S
    ) -> Iterator[RedisMessage | None]:
        """Yield lines until ``stop`` is set; reconnect (with backoff) on failure.

        Args:
            stop: set it to end the iteration (within ``idle_s``).
            idle_s: when nothing arrives for this long, ``None`` is yielded so the
                caller can do periodic work (serve Kafka delivery reports).

        Yields:
            A reconnect marker after each (re)subscribe (``REPLICATE`` has been
            published by then), every line received, and ``None`` when idle.
        """
        sock: socket.socket | None = None
        reader = _RespReader()
        last_traffic = time.monotonic()
        ping_sent = False
        try:
            while not stop.is_set():
                if sock is None:
                    try:
                        sock, reader = self._subscribe()
                        self.publish_replicate()
                    except (RedisError, OSError, ssl.SSLError) as exc:
                        if sock is not None:
                            sock.close()
                            sock = None
                        self._failed("cannot subscribe to Redis", exc)
                        stop.wait(self._backoff.next_delay())
                        continue
                    self.connects += 1
                    self.connected = True
                    self._backoff.reset()
                    last_traffic, ping_sent = time.monotonic(), False
                    self._recovered()
                    yield RedisMessage("", "", time.monotonic(), reconnected=True)
                try:
                    batch = self._read_batch(sock, reader, idle_s)
                    now = time.monotonic()
                    if batch is None:
                        if now - last_traffic > _PING_INTERVAL_S:
                            if ping_sent:
                                raise RespError(
                                    f"no answer to PING within {_PING_INTERVAL_S:.0f} s"
                                )
                            sock.sendall(_command("PING"))
                            ping_sent, last_traffic = True, now
                        yield None
                        continue
                    last_traffic, ping_sent = now, False
                except (RedisError, OSError, ssl.SSLError, ValueError) as exc:
                    sock.close()
                    sock = None
                    self._failed("lost the Redis subscription", exc)
                    continue
                yield from batch
            if sock is not None:
                # Stopping: hand over what already arrived, so a graceful shutdown
                # publishes every line Redis delivered before it.
                yield from self._drain(sock, reader)
        finally:
            self.connected = False
            if sock is not None:
                sock.close()

    def _read_batch(
        self, sock: socket.socket, reader: _RespReader, idle_s: float
    ) -> list[RedisMessage] | None:
        """Every message of one socket read, or None if nothing came in ``idle_s``."""
        sock.settimeout(idle_s)
        try:
            data = sock.recv(_RECV_BYTES)
        except TimeoutError:
            return None
        if not data:
            raise RespError("Redis closed the connection")
        received = time.monotonic()
        reader.feed(data)
        out: list[RedisMessage] = []
        for frame in reader.messages():
            if isinstance(frame, list) and len(frame) == 3 and frame[0] == b"message":
                channel, payload = frame[1], frame[2]
                if isinstance(channel, bytes) and isinstance(payload, bytes):
                    # Two channels carry everything: decode each name once.
                    name = self._channel_names.get(channel)
                    if name is None:
                        name = self._channel_names[channel] = channel.decode(
                            "utf-8", "replace"
                        )
                    out.append(
                        RedisMessage(name, payload.decode("utf-8", "replace"), received)
                    )
            elif isinstance(frame, RespError):
                raise frame
            # Anything else: a PONG, or a (re)subscribe confirmation.
        return out

    def _drain(
        self, sock: socket.socket, reader: _RespReader
    ) -> Iterator[RedisMessage]:
        try:
            while (batch := self._read_batch(sock, reader, 0.01)) is not None:
                yield from batch
        except (RedisError, OSError, ssl.SSLError, ValueError) as exc:
            logger.debug("draining the subscription on shutdown: %s", exc)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.connected = False
        self.last_error = _without_secrets(str(exc) or type(exc).__name__, self._url)
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        self._failed_attempts += 1
        # One outage is one kind of line whatever each attempt reports (refused,
        # timed out, lost): the reconnect loop fails every few seconds, and a line
        # per attempt would bury everything else in the log.
        verdict = self._outage_log.admit("redis down")
        if not verdict.show:
            return
        if self._failed_attempts == 1:
            logger.warning("%s: %s", what, self.last_error)
        else:
            logger.warning(
                "%s: %s (down for %.0f s; %d similar lines suppressed)",
                what,
                self.last_error,
                now - self._down_since,
                verdict.suppressed,
            )

    def _recovered(self) -> None:
        """Log a (re)subscribe: the end of an outage once, with how long it lasted."""
        channels = ", ".join(self.channels)
        if self._down_since is None:
            logger.info("subscribed to %s", channels)
            return
        logger.warning(
            "Redis is back: subscribed to %s again after %.0f s down (%d failed "
            "attempts)",
            channels,
            time.monotonic() - self._down_since,
            self._failed_attempts,
        )
        self._down_since = None
        self._failed_attempts = 0
        # The next outage is news again, however soon it comes.
        self._outage_log = LogDeduplicator(interval_s=self._outage_log_interval_s)


def _without_secrets(text: str, url: str) -> str:
    """Drop a password that a driver message might echo from the URL."""
    password = urlsplit(url).password
    if not password:
        return text
    return text.replace(password, "***").replace(unquote(password), "***")
