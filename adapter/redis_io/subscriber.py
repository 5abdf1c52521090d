"""Follows a Synapse homeserver's Redis replication channels.

Synapse publishes every replication command as one line on the channel
``<server_name>`` and USER_IP alone on ``<server_name>/USER_IP`` (PROTOCOL.md 4). This
subscribes to exactly those two (a pattern would also match other homeservers whose
names share the prefix), yields each line with the time it arrived, and after every
(re)connect publishes ``REPLICATE`` so every Synapse instance re-announces its
positions: the only command synkafka ever writes into Synapse's Redis.

Pub/sub loses whatever is published while the connection is down; the caller learns
of each reconnect (``RedisMessage.reconnected``) so it can check for gaps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.exceptions import RedisError

from adapter.backoff import Backoff
from adapter.errors import ConfigError

__all__ = ["RedisMessage", "ReplicationSubscriber"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RedisMessage:
    """One line from Synapse, or a reconnect marker.

    Attributes:
        channel: the channel it came from (empty for a reconnect marker).
        line: the command line (empty for a reconnect marker).
        received_s: ``time.monotonic()`` when it arrived.
        reconnected: True for the marker yielded after each (re)subscribe.
    """

    channel: str
    line: str
    received_s: float
    reconnected: bool = False


class ReplicationSubscriber:
    """Subscribes to a homeserver's replication channels, reconnecting with backoff.

    Args:
        url: ``redis://[user:password@]host:port[/db]`` or ``rediss://`` for TLS.
        server_name: the homeserver's ``server_name`` (the channel prefix).
        backoff: the reconnect schedule.
        socket_timeout_s: how long a Redis call may block.
    """

    def __init__(
        self,
        url: str,
        server_name: str,
        *,
        backoff: Backoff | None = None,
        socket_timeout_s: float = 30.0,
    ) -> None:
        if not server_name or any(c.isspace() for c in server_name):
            raise ConfigError(f"invalid server name {server_name!r}")
        self.channels = (server_name, f"{server_name}/USER_IP")
        self._url = url
        self._server_name = server_name
        self._backoff = backoff or Backoff(initial_s=0.5, max_s=5.0)
        self._socket_timeout_s = socket_timeout_s
        self.connects = 0
        self.connected = False
        self.last_error = ""

    def _connect(self) -> tuple[redis.Redis, redis.client.PubSub]:
        client = redis.Redis.from_url(
            self._url,
            socket_timeout=self._socket_timeout_s,
            socket_connect_timeout=10.0,
            health_check_interval=30,
        )
        pubsub = client.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        pubsub.subscribe(*self.channels)
        # Wait for both subscribe confirmations before REPLICATE, or the POSITION
        # answers could arrive before we listen (matrix-org/synapse#7427).
        confirmed = 0
        deadline = time.monotonic() + 10.0
        while confirmed < len(self.channels):
            if time.monotonic() > deadline:
                raise RedisError("no subscribe confirmation within 10 s")
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "subscribe":
                confirmed += 1
        client.publish(self._server_name, "REPLICATE ")
        return client, pubsub

    def messages(self, stop: threading.Event) -> Iterator[RedisMessage]:
        """Yield lines until ``stop`` is set; reconnect (with backoff) on failure."""
        is_set, wait = stop.is_set, stop.wait
        client: redis.Redis | None = None
        pubsub: redis.client.PubSub | None = None
        while not is_set():
            if pubsub is None:
                try:
                    client, pubsub = self._connect()
                except (RedisError, OSError) as exc:
                    self.connected = False
                    self.last_error = _without_secrets(str(exc), self._url)
                    delay = self._backoff.next_delay()
                    logger.warning(
                        "cannot subscribe to Redis: %s; retrying in %.1f s",
                        self.last_error,
                        delay,
                    )
                    wait(delay)
                    continue
                self.connects += 1
                self.connected = True
                self._backoff.reset()
                logger.info("subscribed to %s", ", ".join(self.channels))
                yield RedisMessage("", "", time.monotonic(), reconnected=True)
            try:
                message = pubsub.get_message(timeout=0.2)
            except (RedisError, OSError) as exc:
                self.connected = False
                self.last_error = _without_secrets(str(exc), self._url)
                logger.warning("lost Redis connection: %s", self.last_error)
                _close(client, pubsub)
                client, pubsub = None, None
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            data = message["data"]
            yield RedisMessage(
                channel.decode() if isinstance(channel, bytes) else str(channel),
                data.decode("utf-8", "replace")
                if isinstance(data, bytes)
                else str(data),
                time.monotonic(),
            )
        _close(client, pubsub)


def _close(client: redis.Redis | None, pubsub: redis.client.PubSub | None) -> None:
    for thing in (pubsub, client):
        if thing is not None:
            try:
                thing.close()
            except (RedisError, OSError):
                logger.debug("closing a broken Redis connection", exc_info=True)


def _without_secrets(text: str, url: str) -> str:
    """Drop a password that a driver message might echo from the URL."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text
