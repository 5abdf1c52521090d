"""``Publisher``: replication commands onto their Kafka topics.

Routing (docs/architecture.md, "Parts and topics"):

* RDATA and POSITION go to ``<prefix>.stream.<stream>`` keyed by the writer, so every
  record of one (stream, writer) lands in one partition, in order. An RDATA record
  carries every row of its token: there is no ``batch`` sentinel on Kafka.
* POSITION also goes to the compacted ``<prefix>.positions`` topic keyed
  ``<stream>/<writer>``, so a new reader learns every writer's position without
  scanning; :meth:`Publisher.flush` also records the last RDATA token of each writer
  there.
* USER_SYNC, CLEAR_USER_SYNC and presence snapshots go to ``<prefix>.presence.syncs``
  keyed by instance ID; USER_IP to ``<prefix>.user_ip`` keyed by user ID; every other
  command to ``<prefix>.commands``.

Headers name the command, stream and writer so tools can route without decoding.
Every delivery is checked by the producer; a failure surfaces as ``DeliveryError``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from adapter.codec.avro_codec import encode
from adapter.core import topics
from adapter.core.commands import (
    ClearUserSyncsCommand,
    Command,
    PositionCommand,
    RdataCommand,
    UserIpCommand,
    UserSyncCommand,
)
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.io.kafka.producer import DeliveryCallback, Producer
from adapter.io.metrics import Metrics

__all__ = ["Publisher"]


class Publisher:
    """Encodes commands and produces them to the right topic with the right key.

    Args:
        producer: the (idempotent) producer to use.
        prefix: the topic prefix.
        metrics: where to count commands out.
    """

    def __init__(
        self, producer: Producer, prefix: str, *, metrics: Metrics | None = None
    ) -> None:
        self._producer = producer
        self._prefix = prefix
        self._metrics = metrics
        self._stream_topics: dict[str, str] = {}
        self._positions_topic = topics.positions_topic(prefix)
        # The last token published per (stream, writer) that the positions topic
        # does not have yet.
        self._unannounced: dict[tuple[str, str], int] = {}
        self._rdata_routes: dict[
            tuple[str, str], tuple[str, str | None, list[tuple[str, bytes]], Any]
        ] = {}
        self._position_routes: dict[
            tuple[str, str], tuple[str, str | None, list[tuple[str, bytes]], str, Any]
        ] = {}

    @property
    def producer(self) -> Producer:
        """The underlying producer."""
        return self._producer

    def _stream_topic(self, stream: str) -> str:
        topic = self._stream_topics.get(stream)
        if topic is None:
            topic = self._stream_topics[stream] = topics.stream_topic(
                self._prefix, stream
            )
        return topic

    def publish_rdata(
        self,
        stream_name: str,
        instance_name: str,
        token: int,
        rows: Sequence[Any],
        *,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        """Publish every row of one token of one writer as one record."""
        self.publish(
            RdataCommand(stream_name, instance_name, token, tuple(rows)),
            on_delivery=on_delivery,
        )

    def publish(
        self,
        command: Command | PresenceSnapshot,
        *,
        on_delivery: DeliveryCallback | None = None,
        received_s: float | None = None,
    ) -> None:
        """Route, encode and produce one command.

        ``received_s``: when the command's input arrived (``time.monotonic()``); the
        producer's ``on_lag`` then hears how long until the broker acknowledged it.

        Raises:
            EncodeError: the command does not fit its schema (RDATA without a token,
                for example).
            DeliveryError: this or an earlier record was not delivered.
        """
        value = encode(command)
        if type(command) is RdataCommand:
            # The hot path (one record per token): route and counter cached per writer.
            writer_key = (command.stream_name, command.instance_name)
            route = self._rdata_routes.get(writer_key) or self._rdata_route(command)
            topic, key, headers, counter = route
            self._producer.produce(
                topic,
                value,
                key=key,
                headers=headers,
                on_delivery=on_delivery,
                received_s=received_s,
            )
            if command.token is not None:
                self._unannounced[writer_key] = command.token
            if counter is not None:
                counter.inc()
            return
        if type(command) is PositionCommand:
            # The other hot path: both records' routes and the counter cached.
            writer_key = (command.stream_name, command.instance_name)
            proute = self._position_routes.get(writer_key) or self._position_route(
                command
            )
            topic, key, headers, position_key, counter = proute
            self._producer.produce(
                topic,
                value,
                key=key,
                headers=headers,
                on_delivery=on_delivery,
                received_s=received_s,
            )
            self._producer.produce(
                self._positions_topic, value, key=position_key, headers=headers
            )
            self._unannounced.pop(writer_key, None)
            if counter is not None:
                counter.inc()
            return
        topic, key, headers = self._route(command)
        self._producer.produce(
            topic,
            value,
            key=key,
            headers=headers,
            on_delivery=on_delivery,
            received_s=received_s,
        )
        if isinstance(command, RdataCommand) and command.token is not None:
            self._unannounced[(command.stream_name, command.instance_name)] = (
                command.token
            )
        if self._metrics is not None:
            name = "PRESENCE" if isinstance(command, PresenceSnapshot) else command.NAME
            stream = getattr(command, "stream_name", "")
            self._metrics.commands_out.labels(name, stream).inc()

    def _position_route(
        self, command: PositionCommand
    ) -> tuple[str, str | None, list[tuple[str, bytes]], str, Any]:
        topic, key, headers = self._route(command)
        counter = (
            self._metrics.commands_out.labels("POSITION", command.stream_name)
            if self._metrics is not None
            else None
        )
        route = (
            topic,
            key,
            headers,
            topics.position_key(command.stream_name, command.instance_name),
            counter,
        )
        self._position_routes[(command.stream_name, command.instance_name)] = route
        return route

    def _rdata_route(
        self, command: RdataCommand
    ) -> tuple[str, str | None, list[tuple[str, bytes]], Any]:
        topic, key, headers = self._route(command)
        counter = (
            self._metrics.commands_out.labels("RDATA", command.stream_name)
            if self._metrics is not None
            else None
        )
        route = (topic, key, headers, counter)
        self._rdata_routes[(command.stream_name, command.instance_name)] = route
        return route

    def _route(
        self, command: Command | PresenceSnapshot
    ) -> tuple[str, str | None, list[tuple[str, bytes]]]:
        prefix = self._prefix
        if isinstance(command, RdataCommand | PositionCommand):
            return (
                self._stream_topic(command.stream_name),
                topics.stream_key(command.instance_name),
                [
                    (topics.HEADER_COMMAND, command.NAME.encode()),
                    (topics.HEADER_STREAM, command.stream_name.encode()),
                    (topics.HEADER_WRITER, command.instance_name.encode()),
                ],
            )
        if isinstance(command, PresenceSnapshot):
            return (
                topics.presence_topic(prefix),
                topics.presence_key(command.instance_id),
                [(topics.HEADER_COMMAND, b"PRESENCE")],
            )
        headers = [(topics.HEADER_COMMAND, command.NAME.encode())]
        if isinstance(command, UserSyncCommand | ClearUserSyncsCommand):
            return (
                topics.presence_topic(prefix),
                topics.presence_key(command.instance_id),
                headers,
            )
        if isinstance(command, UserIpCommand):
            return (
                topics.user_ip_topic(prefix),
                topics.user_ip_key(command.user_id),
                headers,
            )
        return topics.commands_topic(prefix), topics.command_key(command.NAME), headers

    def topic_for(self, command: Command | PresenceSnapshot) -> str:
        """The topic :meth:`publish` sends ``command`` to.

        A POSITION also goes to the positions topic; that copy is not this topic.
        """
        return self._route(command)[0]

    def announce_positions(self) -> None:
        """Record on the positions topic the last RDATA token of every writer published."""
        for (stream, writer), token in sorted(self._unannounced.items()):
            value = encode(PositionCommand(stream, writer, token, token))
            self._producer.produce(
                self._positions_topic,
                value,
                key=topics.position_key(stream, writer),
                headers=[
                    (topics.HEADER_COMMAND, b"POSITION"),
                    (topics.HEADER_STREAM, stream.encode()),
                    (topics.HEADER_WRITER, writer.encode()),
                ],
            )
        self._unannounced.clear()

    def flush(
        self, timeout_s: float = 30.0, *, interrupt: threading.Event | None = None
    ) -> None:
        """Announce positions and wait for every record to be acknowledged.

        Args:
            timeout_s: the longest wait.
            interrupt: when set, stop waiting early (see :meth:`Producer.flush`).

        Raises:
            DeliveryError: a record was not delivered.
        """
        self.announce_positions()
        self._producer.flush(timeout_s, interrupt=interrupt)
