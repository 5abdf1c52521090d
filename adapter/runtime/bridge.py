"""The bridge: a live Synapse's Redis replication, published to Kafka, with gaps repaired.

For every line Synapse publishes on ``<server_name>`` and ``<server_name>/USER_IP``:

* ``RDATA``: rows of one token are joined per (stream, writer) (Synapse's ``batch``
  lines; keyed by writer too, unlike Synapse, so two writers' batches never mix) and
  published as ONE record on the stream's topic;
* ``POSITION``: published on the stream's topic and the positions topic;
* ``USER_SYNC`` / ``CLEAR_USER_SYNC``: folded into each instance's syncing set, which is
  published whole on the compacted presence topic (the format of
  :mod:`adapter.presence`); the snapshot's heartbeat is the time of the instance's last
  USER_SYNC, so a worker that stops talking expires as it would in Synapse;
* ``USER_IP``: to the user_ip topic (its access token is never logged);
* everything else: to the commands topic.

**Gap repair.** Redis pub/sub drops what is published while a connection is down.
The bridge tracks, per (stream, writer), the last token it published (seeded at start
from the positions topic, so it also repairs what happened while it was stopped). A
``POSITION`` whose ``prev`` is past that token, or, right after a reconnect, an
``RDATA`` past it, means rows were missed: with a database, the bridge reads them
(from Synapse's own tables) and publishes them in token order before going on, so the
Kafka log holds every token. Without one it publishes what it has and counts the gap;
consumers then backfill.

The bridge never writes RDATA or POSITION into Redis; its only Redis command is
``REPLICATE`` after each (re)connect.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from adapter import topics
from adapter.commands import (
    ClearUserSyncsCommand,
    Command,
    PositionCommand,
    RdataCommand,
    UserIpCommand,
    UserSyncCommand,
    parse_line,
)
from adapter.errors import AdapterError, BackfillError, DecodeError, KafkaIOError
from adapter.kafka.producer import Delivered, Producer
from adapter.metrics import Metrics
from adapter.ports import BackfillReader
from adapter.records import PresenceSnapshot, SyncingDevice
from adapter.redis_io import RedisMessage, ReplicationSubscriber
from adapter.rows import Row
from adapter.runtime.publisher import Publisher

__all__ = ["Bridge", "mask_access_tokens"]

logger = logging.getLogger(__name__)

# Synapse access tokens (syt_...), and the first JSON string of a USER_IP line, which
# is the token whatever its shape.
_SYT_RE = re.compile(r"syt_[A-Za-z0-9_\-]+")
_USER_IP_TOKEN_RE = re.compile(r'^(USER_IP\s+\S+\s+\[\s*")((?:[^"\\]|\\.)*)(")')


def mask_access_tokens(line: str) -> str:
    """``line`` with every access token replaced by ``***``."""
    masked = _USER_IP_TOKEN_RE.sub(r"\1***\3", line)
    return _SYT_RE.sub("syt_***", masked)


@dataclass(slots=True)
class _Instance:
    syncing: dict[tuple[str, str | None], int] = field(default_factory=dict)
    last_seen_ms: int = 0


class Bridge:
    """Follows Synapse's Redis replication and publishes it to Kafka.

    Args:
        subscriber: the Redis side.
        producer: the Kafka producer (idempotent; every delivery checked).
        prefix: the topic prefix.
        metrics: where to report.
        open_reader: opens Synapse's database for gap repair, or None.
        published: the last token already on Kafka per (stream, writer), e.g. from
            :func:`adapter.runtime.lag.read_positions_topic`.
        now_ms: wall clock in ms (tests may pin it).
    """

    def __init__(
        self,
        subscriber: ReplicationSubscriber,
        producer: Producer,
        prefix: str,
        *,
        metrics: Metrics,
        open_reader: Callable[[], BackfillReader] | None = None,
        published: dict[tuple[str, str], int] | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._subscriber = subscriber
        self._producer = producer
        self._publisher = Publisher(producer, prefix, metrics=metrics)
        self._prefix = prefix
        self._metrics = metrics
        self._open_reader = open_reader
        self._reader: BackfillReader | None = None
        self._published: dict[tuple[str, str], int] = dict(published or {})
        self._pending: dict[tuple[str, str], list[Row]] = {}
        # (stream, writer) keys not heard from since the last reconnect.
        self._suspect: set[tuple[str, str]] = set()
        self._instances: dict[str, _Instance] = {}
        self._now_ms = now_ms
        self.lines = 0
        self.parse_failures = 0
        self.gap_rows = 0

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Bridge until ``stop`` is set, then flush everything.

        Raises:
            KafkaIOError: Kafka kept failing (the caller restarts with backoff).
        """
        next_announce = time.monotonic() + 1.0
        try:
            for message in self._subscriber.messages(stop):
                self._metrics.bridge_connected.set(
                    1 if self._subscriber.connected else 0
                )
                if message.reconnected:
                    self._on_reconnect()
                elif message.line.strip():
                    self.handle(message)
                now = time.monotonic()
                if now >= next_announce:
                    self._publisher.announce_positions()
                    self._producer.poll(0)
                    next_announce = now + 1.0
        finally:
            self._metrics.bridge_connected.set(0)
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self._publisher.flush()

    def _on_reconnect(self) -> None:
        # Whatever was published while we were away is lost on Redis: every key is
        # suspect until its next command shows whether anything is missing.
        self._suspect = set(self._published)
        # Batches cut by the disconnect are incomplete; Synapse drops them too.
        self._pending.clear()
        if self._subscriber.connects > 1:
            self._metrics.reconnects.labels("redis").inc()

    # -- one line -------------------------------------------------------------------

    def handle(self, message: RedisMessage) -> None:
        """Parse one line and publish what it means."""
        self.lines += 1
        try:
            command = parse_line(message.line)
        except DecodeError as exc:
            self._dead_letter(message, f"parse: {exc.reason}")
            return
        self._metrics.bridge_lines.labels(command.NAME).inc()
        self._metrics.commands_in.labels(
            command.NAME, getattr(command, "stream_name", "")
        ).inc()
        on_ack = self._lag_observer(message.received_s)
        if isinstance(command, RdataCommand):
            self._on_rdata(command, on_ack)
        elif isinstance(command, PositionCommand):
            self._on_position(command, on_ack)
        elif isinstance(command, UserSyncCommand):
            self._on_user_sync(command, on_ack)
        elif isinstance(command, ClearUserSyncsCommand):
            self._instances.pop(command.instance_id, None)
            self._publisher.publish(command, on_delivery=on_ack)
        else:
            self._publish_other(command, on_ack)

    def _lag_observer(
        self, received_s: float
    ) -> Callable[[object, Delivered | None], None]:
        histogram = self._metrics.bridge_lag

        def observe(error: object, delivered: Delivered | None) -> None:
            if error is None:
                histogram.observe(time.monotonic() - received_s)

        return observe

    def _on_rdata(
        self, command: RdataCommand, on_ack: Callable[[object, Delivered | None], None]
    ) -> None:
        key = (command.stream_name, command.instance_name)
        rows = self._pending.setdefault(key, [])
        rows.extend(command.rows)
        if command.token is None:
            return
        del self._pending[key]
        token = command.token
        last = self._published.get(key)
        if last is not None and token <= last:
            # Already on Kafka (repaired from the database, or re-announced).
            return
        if key in self._suspect and last is not None:
            self._suspect.discard(key)
            # The first RDATA after a reconnect: what came between is unknown.
            if self._repair(command.stream_name, command.instance_name, last, token):
                return
        self._suspect.discard(key)
        self._publisher.publish(
            RdataCommand(
                command.stream_name, command.instance_name, token, tuple(rows)
            ),
            on_delivery=on_ack,
        )
        self._published[key] = token

    def _on_position(
        self,
        command: PositionCommand,
        on_ack: Callable[[object, Delivered | None], None],
    ) -> None:
        key = (command.stream_name, command.instance_name)
        self._suspect.discard(key)
        # A POSITION ends any batch of this writer: Synapse re-reads such rows.
        self._pending.pop(key, None)
        last = self._published.get(key)
        if last is not None and command.prev_token > last:
            self._repair(
                command.stream_name, command.instance_name, last, command.new_token
            )
        self._publisher.publish(command, on_delivery=on_ack)
        # Below `last` only when an in-memory stream restarted (typing): follow it.
        self._published[key] = command.new_token

    def _repair(self, stream: str, writer: str, from_token: int, to_token: int) -> bool:
        """Publish the writer's rows in (from_token, to_token] from the database.

        Returns:
            True when the range was read and published; False when there is no
            database or the stream has no database source (the gap is counted).
        """
        reader = self._reader_or_none()
        if reader is None or not reader.has_source(stream):
            self._metrics.bridge_gaps.labels(stream, "unrepaired").inc()
            logger.warning(
                "%s/%s: tokens (%d, %d] may be missing and cannot be read back",
                stream,
                writer,
                from_token,
                to_token,
            )
            return False
        rows = 0
        try:
            for token, typed_rows in reader.read(stream, writer, from_token, to_token):
                self._publisher.publish(RdataCommand(stream, writer, token, typed_rows))
                self._published[(stream, writer)] = token
                rows += len(typed_rows)
        except BackfillError:
            self._drop_reader()
            self._metrics.bridge_gaps.labels(stream, "unrepaired").inc()
            logger.exception("%s/%s: gap repair failed", stream, writer)
            return False
        self.gap_rows += rows
        self._metrics.bridge_gaps.labels(stream, "repaired").inc()
        self._metrics.bridge_gap_rows.labels(stream).inc(rows)
        self._metrics.bridge_gap_tokens.labels(stream).inc(to_token - from_token)
        self._published[(stream, writer)] = max(
            self._published.get((stream, writer), to_token), to_token
        )
        logger.info(
            "%s/%s: repaired tokens (%d, %d] from the database (%d rows)",
            stream,
            writer,
            from_token,
            to_token,
            rows,
        )
        return True

    def _reader_or_none(self) -> BackfillReader | None:
        if self._reader is None and self._open_reader is not None:
            try:
                self._reader = self._open_reader()
            except BackfillError as exc:
                logger.warning("cannot open the database for gap repair: %s", exc)
                return None
        return self._reader

    def _drop_reader(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except AdapterError:
                logger.debug("closing a failed database reader", exc_info=True)
            self._reader = None

    def _on_user_sync(
        self,
        command: UserSyncCommand,
        on_ack: Callable[[object, Delivered | None], None],
    ) -> None:
        instance = self._instances.setdefault(command.instance_id, _Instance())
        device = (command.user_id, command.device_id)
        if command.is_syncing:
            instance.syncing[device] = command.last_sync_ms
        else:
            instance.syncing.pop(device, None)
        instance.last_seen_ms = self._now_ms()
        snapshot = PresenceSnapshot(
            instance_id=command.instance_id,
            instance_name="",
            heartbeat_ms=instance.last_seen_ms,
            syncing=tuple(
                SyncingDevice(user, dev, since)
                for (user, dev), since in sorted(
                    instance.syncing.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
                )
            ),
        )
        self._publisher.publish(snapshot, on_delivery=on_ack)

    def _publish_other(
        self, command: Command, on_ack: Callable[[object, Delivered | None], None]
    ) -> None:
        self._publisher.publish(command, on_delivery=on_ack)
        if isinstance(command, UserIpCommand):
            logger.debug("USER_IP for %s published", command.user_id)

    def _dead_letter(self, message: RedisMessage, reason: str) -> None:
        self.parse_failures += 1
        self._metrics.bridge_parse_failures.inc()
        masked = mask_access_tokens(message.line)
        logger.warning(
            "unparseable line on %s: %s", message.channel, mask_access_tokens(reason)
        )
        topic = topics.dlq_topic(self._prefix)
        try:
            self._producer.produce(
                topic,
                masked.encode("utf-8", "replace"),
                key=message.channel,
                headers=[
                    (topics.HEADER_DLQ_REASON, mask_access_tokens(reason).encode()),
                    (topics.HEADER_DLQ_SOURCE, f"redis:{message.channel}".encode()),
                ],
            )
        except KafkaIOError:
            logger.exception("cannot write a dead letter")
            raise
        self._metrics.dead_letters.labels(topic, "parse").inc()
