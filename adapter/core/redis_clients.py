"""What Redis's ``CLIENT LIST`` says about Synapse's processes, read without I/O.

Measured against Synapse 1.163 (docs/presence.md, "A worker's death"): every Synapse
process holds two Redis connections, a subscriber (``sub`` 1, or 2 for ``main``,
which also takes ``USER_IP``) and a publisher that sends everything the process
says, ``USER_SYNC`` included. Neither carries a client name, and pub/sub does not
say who published a line. What ties an instance ID to a connection is time: right
after a ``USER_SYNC`` reaches the bridge, the connection that published it has been
idle for at most a second or two. Other processes that published in that moment
are in the same set, so the tie is a set of candidates, never a guess.

A process that exits, by SIGTERM or SIGKILL, loses both connections at once: the
kernel closes its sockets, and Redis drops them from its list within milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_MAX_IDLE_S", "OWN_NAME_PREFIX", "ClientList", "read_client_list"]

#: Connections this idle or less count as having just published. Redis counts idle
#: time in whole seconds of a clock it updates about every 100 ms, so a line
#: published under a second ago can already show 1 s; 2 s leaves that margin.
DEFAULT_MAX_IDLE_S: Final = 2
#: Client names of synkafka's own connections, which are never candidates.
OWN_NAME_PREFIX: Final = "synkafka"


@dataclass(frozen=True, slots=True)
class ClientList:
    """One answer of ``CLIENT LIST``.

    Attributes:
        server: the Redis server's ``run_id``. Client IDs count up from 1 again
            after a restart, so IDs only compare within one server run.
        present: the ID of every connection.
        recent_publishers: connections that may have just published: not
            subscribed to anything, not synkafka's own, idle at most
            :data:`DEFAULT_MAX_IDLE_S` (or the given limit).
    """

    server: str
    present: frozenset[int]
    recent_publishers: frozenset[int]


def read_client_list(
    server: str,
    entries: Iterable[Mapping[str, str]],
    *,
    max_idle_s: int = DEFAULT_MAX_IDLE_S,
) -> ClientList:
    """Build a :class:`ClientList` from ``CLIENT LIST`` entries (field -> value).

    An entry without a numeric ``id`` is skipped; one without a numeric ``idle``
    or subscription count is never a candidate.
    """
    present: set[int] = set()
    recent: set[int] = set()
    for entry in entries:
        try:
            client_id = int(entry["id"])
        except (KeyError, ValueError):
            continue
        present.add(client_id)
        if entry.get("name", "").startswith(OWN_NAME_PREFIX):
            continue
        try:
            idle = int(entry.get("idle", ""))
            subscribed = sum(
                int(entry.get(field, "0")) for field in ("sub", "psub", "ssub")
            )
        except ValueError:
            continue
        if idle <= max_idle_s and subscribed == 0:
            recent.add(client_id)
    return ClientList(server, frozenset(present), frozenset(recent))
