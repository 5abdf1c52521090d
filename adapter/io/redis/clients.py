"""Lists Redis's clients for the bridge's presence death signal.

One ordinary redis-py connection (named ``synkafka-bridge-probe``, so it is never a
candidate itself) sends ``INFO server`` and ``CLIENT LIST`` in one pipeline: the
``run_id`` tells client IDs of one server run from the next. The decisions live in
:mod:`adapter.core.redis_clients` and :class:`~adapter.core.bridged_presence.BridgedPresence`.

``CLIENT LIST`` and ``INFO`` belong to Redis's ``@admin``/``@dangerous`` command
categories. A Redis user that may not run them gets one warning and no more
probes: the bridge then keeps the time windows alone (docs/presence.md).
"""

from __future__ import annotations

import logging
import time
from typing import Final

import redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from adapter.core.redis_clients import (
    DEFAULT_MAX_IDLE_S,
    OWN_NAME_PREFIX,
    ClientList,
    read_client_list,
)

__all__ = ["PROBE_CLIENT_NAME", "RedisClients"]

logger = logging.getLogger(__name__)

#: The probe connection's ``CLIENT SETNAME``.
PROBE_CLIENT_NAME: Final = f"{OWN_NAME_PREFIX}-bridge-probe"


class RedisClients:
    """Asks Redis which connections it holds.

    Args:
        url: the Redis URL (the bridge's ``--redis``, password included).
        timeout_s: socket timeout of each request; the bridge's loop waits for it.
        max_idle_s: see :data:`adapter.core.redis_clients.DEFAULT_MAX_IDLE_S`.
    """

    def __init__(
        self, url: str, *, timeout_s: float = 1.0, max_idle_s: int = DEFAULT_MAX_IDLE_S
    ) -> None:
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            client_name=PROBE_CLIENT_NAME,
            decode_responses=True,
        )
        self._max_idle_s = max_idle_s
        self.enabled = True
        """False once Redis refused the commands (the probe then stays off)."""

    def list(self) -> tuple[ClientList, float] | None:
        """The client list and ``time.monotonic()`` when Redis answered it.

        Returns None when the probe is off or Redis could not answer; nothing is
        decided from a list that did not come.
        """
        if not self.enabled:
            return None
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.info("server")
            pipe.client_list()
            info, entries = pipe.execute()
        except (NoPermissionError, ResponseError) as exc:
            # An ACL without +client|list or +info: no signal, the windows remain.
            self.enabled = False
            logger.warning(
                "Redis refused CLIENT LIST or INFO (%s): presence of a worker that "
                "dies is judged by the time windows alone",
                exc,
            )
            return None
        except (RedisError, OSError) as exc:
            # The subscriber reports an outage; this only says the probe skipped.
            logger.debug("cannot list the clients: %s", exc)
            return None
        taken_s = time.monotonic()
        clients = read_client_list(
            str(info.get("run_id", "")), entries, max_idle_s=self._max_idle_s
        )
        return clients, taken_s

    def close(self) -> None:
        """Close the connection."""
        self._client.close()
