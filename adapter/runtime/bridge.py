"""The bridge: a live Synapse's Redis replication, published to Kafka, with gaps repaired.

For every line Synapse publishes on ``<server_name>`` and ``<server_name>/USER_IP``
(parsed with :func:`adapter.core.commands.parse_line`):

* ``RDATA``: rows of one token are joined per (stream, writer) (Synapse's ``batch``
  lines; keyed by writer too, unlike Synapse, so two writers' batches never mix) and
  published as ONE record on the stream's topic;
* ``POSITION``: published on the stream's topic and the positions topic;
* ``USER_SYNC`` / ``CLEAR_USER_SYNC``: folded into each instance's syncing set, which is
  published whole on the compacted presence topic (a
  :class:`~adapter.core.presence_snapshot.PresenceSnapshot`) and republished with a fresh heartbeat
  while the instance is alive by the rules of
  :class:`~adapter.core.bridged_presence.BridgedPresence` (its users' rows on the
  ``presence`` stream are the sign of life; Synapse sends USER_SYNC only on edges).
  An instance that is gone (cleared, its Redis connections closed, or no sign of
  life) gets a tombstone; a clear is also published as the clear command itself.
  The connections come from ``CLIENT LIST`` (:class:`~adapter.io.redis.RedisClients`):
  listed right after each ``USER_SYNC`` to tie the instance to them, and every
  ``probe_interval_s`` to see them close;
* ``USER_IP``: to the user_ip topic. Its access token is never logged;
* everything else: to the commands topic.

A line that does not parse (or whose command does not fit its Avro schema) goes to the
dead-letter topic as text, with every access token masked, and is counted; the bridge
carries on.

**Gap repair.** Redis pub/sub drops what is published while a connection is down.
The bridge tracks, per (stream, writer), the last token it published (seeded at start
from the positions topic, so it also repairs what happened while it was stopped). Two
things mean rows were missed:

* a ``POSITION`` whose ``prev`` is past that token (Synapse's own gap test in
  ``_process_position``), which every instance sends in answer to the bridge's
  ``REPLICATE`` after a reconnect;
* right after a reconnect, an ``RDATA`` more than one token past it.

With a database the bridge reads the missing rows (from Synapse's own tables, through
:class:`~adapter.core.ports.BackfillReader`) and publishes them in token order before going
on, so the Kafka log holds every token; live RDATA at or below the repaired token is
then a duplicate and dropped. Without a database it publishes what it has and counts
the gap (``synkafka_bridge_gaps{outcome="unrepaired"}``); consumers then backfill.

These rules (and the batch joining) are decided by the pure
:class:`~adapter.core.bridge_rules.BridgeRules`; this module is its shell: it feeds the
lines in and carries the decisions out.

The bridge never writes RDATA or POSITION into Redis; the only line it publishes is
``REPLICATE`` after each (re)connect, and the only other commands it sends are the
read-only ``INFO server`` and ``CLIENT LIST`` of the presence probe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from adapter.core import topics
from adapter.core.bridge_rules import BridgeRules, Repair, Unrepaired
from adapter.core.bridge_rules import Publish as PublishRdata
from adapter.core.bridged_presence import BridgedPresence, Gone, Publish
from adapter.core.commands import (
    ClearUserSyncsCommand,
    PositionCommand,
    RdataCommand,
    UserSyncCommand,
    parse_line,
)
from adapter.core.errors import (
    AdapterError,
    BackfillError,
    ConfigError,
    DecodeError,
    EncodeError,
)
from adapter.core.masking import mask_access_tokens, mask_user_ip_line
from adapter.core.ports import BackfillReader
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.core.redis_clients import ClientList
from adapter.core.rows import PresenceRow, Row
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import HistogramBatch, Metrics
from adapter.io.redis import RedisClients, RedisMessage, ReplicationSubscriber
from adapter.runtime.dead_letter_writer import DeadLetterWriter
from adapter.runtime.health import DependencyStatus
from adapter.runtime.presence_follower import TOMBSTONE_HEADER
from adapter.runtime.progress import Progress, ProgressReporter
from adapter.runtime.publisher import Publisher

__all__ = [
    "DEFAULT_ANNOUNCE_INTERVAL_S",
    "DEFAULT_PROBE_INTERVAL_S",
    "Bridge",
    "BridgeStats",
]

logger = logging.getLogger(__name__)

# Gap repairs spanning at least this many tokens show their progress.
_PROGRESS_MIN_TOKENS = 1000

# Lines handled between two additions of the local line and command counts to the
# metrics (also done whenever Redis is idle).
_COUNTS_EVERY = 256

#: How often the last RDATA token of each writer is recorded on the positions topic.
DEFAULT_ANNOUNCE_INTERVAL_S: Final = 1.0
#: How often Redis's client list is checked for closed worker connections.
DEFAULT_PROBE_INTERVAL_S: Final = 2.0
# A USER_SYNC is tied to the connections idle for at most 2 s (Redis's idle time has
# whole seconds) only when the list was taken this soon after the line was read.
_TIE_WITHIN_S: Final = 0.5


@dataclass(slots=True)
class BridgeStats:
    """Counters of one :class:`Bridge`, for tests and benchmarks (metrics have them too).

    Attributes:
        lines: non-blank lines received.
        parse_failures: lines sent to the dead-letter topic.
        gap_rows: rows read from the database to repair gaps.
        gap_tokens: tokens covered by repaired gaps.
        unrepaired_gaps: gaps seen that could not be repaired.
        reconnects: Redis subscribes after the first one.
        client_lists: ``CLIENT LIST`` answers the presence probe received.
    """

    lines: int = 0
    parse_failures: int = 0
    gap_rows: int = 0
    gap_tokens: int = 0
    unrepaired_gaps: int = 0
    reconnects: int = 0
    client_lists: int = 0


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
        presence: the syncing sets already on the presence topic, by instance ID
            (e.g. a :class:`~adapter.runtime.presence_follower.PresenceFollower`'s
            state after its replay), so a restarted bridge extends them.
        now_ms: wall clock in ms (tests may pin it).
        announce_interval_s: see :data:`DEFAULT_ANNOUNCE_INTERVAL_S`.
        on_lag: also called with each end-to-end lag in seconds (benchmarks keep
            them all; the histogram has buckets only).
        dead_letters: writes unparseable lines to the dead-letter topic and waits
            for each acknowledgement (a Redis line cannot be read again).
        presence_windows: keyword arguments of
            :class:`~adapter.core.bridged_presence.BridgedPresence` (tests shorten them).
        clients: lists Redis's clients for the presence death signal; None: off.
        probe_interval_s: how often ``clients`` looks for closed connections.
    """

    def __init__(
        self,
        subscriber: ReplicationSubscriber,
        producer: Producer,
        prefix: str,
        *,
        metrics: Metrics,
        open_reader: Callable[[], BackfillReader] | None = None,
        published: Mapping[tuple[str, str], int] | None = None,
        presence: Mapping[str, PresenceSnapshot] | None = None,
        now_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        announce_interval_s: float = DEFAULT_ANNOUNCE_INTERVAL_S,
        on_lag: Callable[[float], None] | None = None,
        dead_letters: DeadLetterWriter,
        presence_windows: Mapping[str, int] | None = None,
        database: DependencyStatus | None = None,
        clients: RedisClients | None = None,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
    ) -> None:
        self._subscriber = subscriber
        self._dead_letters = dead_letters
        self._producer = producer
        self._publisher = Publisher(producer, prefix, metrics=metrics)
        self._prefix = prefix
        self._metrics = metrics
        self._open_reader = open_reader
        self._reader: BackfillReader | None = None
        self.database = database or DependencyStatus()
        """The last outcome of opening or reading the database (for ``/health``)."""
        self._rules = BridgeRules(published=published, database=open_reader is not None)
        self._now_ms = now_ms
        self._presence = BridgedPresence(**(presence_windows or {}))
        self._presence.seed(presence or {}, now_ms())
        self._presence_topic = topics.presence_topic(prefix)
        self._clients = clients
        self._probe_interval_s = probe_interval_s
        self._next_probe = 0.0
        # The last client list and when Redis answered it (monotonic seconds).
        self._client_list: tuple[ClientList, float] | None = None
        self._announce_interval_s = announce_interval_s
        self.stats = BridgeStats()
        # Lines and commands are counted in plain dicts and added to the metrics
        # every _COUNTS_EVERY lines and when idle: a labelled inc takes a lock, and
        # per line that cost more than parsing the line.
        self._lines_by_command: dict[str, int] = {}
        self._commands_in: dict[tuple[str, str], int] = {}
        self._uncounted = 0
        # One observation per acknowledged record: kept locally, added per batch.
        self._lag = HistogramBatch(metrics.bridge_lag)
        histogram = self._lag.observe
        if on_lag is None:
            self._observe_lag: Callable[[float], None] = histogram
        else:

            def both(seconds: float) -> None:
                histogram(seconds)
                on_lag(seconds)

            self._observe_lag = both
        # Acknowledgements of records published with their Redis receipt time.
        producer.on_lag = self._observe_lag

    @property
    def published(self) -> dict[tuple[str, str], int]:
        """The last token published per (stream, writer) (a copy)."""
        return self._rules.snapshot()

    # -- the loop -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Bridge until ``stop`` is set, then flush everything.

        Process-wide interpreter settings are left alone: the process owner may apply
        :func:`adapter.runtime.interpreter.tuned` around this call, as ``synkafka
        bridge`` does.

        Raises:
            KafkaIOError: Kafka failed (the caller restarts with backoff).
        """
        self._run(stop)

    def _run(self, stop: threading.Event) -> None:
        producer = self._producer
        connected = self._metrics.bridge_connected
        next_announce = time.monotonic() + self._announce_interval_s
        try:
            for message in self._subscriber.messages(stop):
                if message is None:
                    # Idle: serve delivery reports, so the lag of the last lines of
                    # a burst is measured when they are acknowledged.
                    producer.poll(0)
                    self._publish_counts()
                elif message.reconnected:
                    connected.set(1)
                    self._on_reconnect()
                elif message.line:
                    self.handle(message)
                    self._uncounted += 1
                    if self._uncounted >= _COUNTS_EVERY:
                        self._publish_counts()
                now = time.monotonic()
                if now >= next_announce:
                    self._presence_tick(now)
                    self._publisher.announce_positions()
                    producer.poll(0)
                    next_announce = now + self._announce_interval_s
        finally:
            connected.set(0)
            self._close_reader()
            self._publish_counts()
        self._publisher.flush()
        self._lag.flush()  # what the last acknowledgements observed

    def _publish_counts(self) -> None:
        """Add the lines, commands and lags counted since the last call to the metrics."""
        self._uncounted = 0
        self._lag.flush()
        if self._lines_by_command:
            lines, self._lines_by_command = self._lines_by_command, {}
            for name, count in lines.items():
                self._metrics.bridge_lines.labels(name).inc(count)
        if self._commands_in:
            commands, self._commands_in = self._commands_in, {}
            for (name, stream), count in commands.items():
                self._metrics.commands_in.labels(name, stream).inc(count)

    def _on_reconnect(self) -> None:
        # Whatever was published while we were away is lost on Redis: every key is
        # suspect until its next command shows whether anything is missing.
        self._rules.reconnected()
        if self._subscriber.connects > 1:
            self.stats.reconnects += 1
            self._metrics.reconnects.labels("redis").inc()

    # -- one line -------------------------------------------------------------------

    def handle(self, message: RedisMessage) -> None:
        """Parse one line and publish what it means.

        Raises:
            KafkaIOError: Kafka failed.
        """
        line = message.line
        if not line.strip():
            return
        self.stats.lines += 1
        try:
            command = parse_line(line)
        except DecodeError as exc:
            self._dead_letter(message, f"parse: {exc.reason}")
            return
        name = command.NAME
        lines = self._lines_by_command
        lines[name] = lines.get(name, 0) + 1
        try:
            if isinstance(command, RdataCommand):
                self._count_in(name, command.stream_name)
                self._on_rdata(command, message.received_s)
            elif isinstance(command, PositionCommand):
                self._count_in(name, command.stream_name)
                self._on_position(command, message.received_s)
            elif isinstance(command, UserSyncCommand):
                self._count_in(name, "")
                self._on_user_sync(command, message.received_s)
            else:
                self._count_in(name, "")
                self._publisher.publish(command, received_s=message.received_s)
                if isinstance(command, ClearUserSyncsCommand):
                    self._apply_presence(self._presence.clear(command.instance_id))
        except EncodeError as exc:
            # Parsed, but a value does not fit its schema (a token beyond a long...).
            self._dead_letter(message, f"encode: {exc}")

    def _count_in(self, name: str, stream: str) -> None:
        commands = self._commands_in
        commands[name, stream] = commands.get((name, stream), 0) + 1

    def _on_rdata(self, command: RdataCommand, received_s: float) -> None:
        decision = self._rules.rdata(command)
        if type(decision) is PublishRdata:
            if decision.gap is not None:
                self._unrepaired(decision.gap, decision.gap.from_token)
            self._publish_rdata(decision.command, received_s)
        elif isinstance(decision, Repair):
            # With a database every first RDATA after a reconnect is checked: its
            # batch may be cut too. The live rows are used only if the database no
            # longer has this token (overwritten or deleted rows).
            self._repair(decision)
            follow = self._rules.after_repair(decision)
            if isinstance(follow, PublishRdata):
                self._publish_rdata(follow.command, received_s)
        # Otherwise buffered (a `batch` line) or dropped: nothing to publish.

    def _publish_rdata(self, command: RdataCommand, received_s: float) -> None:
        self._publisher.publish(command, received_s=received_s)
        self._rules.published(command)
        if command.stream_name == "presence":
            self._on_presence_rows(command.rows)

    def _on_position(self, command: PositionCommand, received_s: float) -> None:
        decision = self._rules.position(command)
        gap = decision.gap
        if isinstance(gap, Repair):
            self._repair(gap)
        elif gap is not None:
            self._unrepaired(gap, gap.from_token)
        self._publisher.publish(command, received_s=received_s)
        self._rules.published(command)

    def _repair(self, repair: Repair) -> None:
        """Publish the writer's rows in (from_token, to_token] from the database.

        What cannot be read (no database, the stream has no database source, the
        rows are gone or the read failed) is counted as an unrepaired gap.
        """
        stream, writer = repair.stream, repair.writer
        from_token, to_token = repair.from_token, repair.to_token
        reader = self._reader_or_none()
        if reader is None or not reader.has_source(stream):
            self._unrepaired(repair, from_token)
            return
        rows = 0
        top = from_token
        # A long catch-up (a bridge restarted after hours) shows its progress: a live
        # line on a terminal, a log line every few seconds elsewhere.
        reporter = None
        if to_token - from_token >= _PROGRESS_MIN_TOKENS:
            reporter = ProgressReporter(
                lambda: Progress(rows, rows, to_token - top, 0, 1), log_every_s=5.0
            )
            reporter.start()
        try:
            for token, typed_rows in reader.read(stream, writer, from_token, to_token):
                command = RdataCommand(stream, writer, token, typed_rows)
                self._publisher.publish(command)
                self._rules.published(command)
                top = token
                rows += len(typed_rows)
        except ConfigError:
            raise  # not Synapse's database, or wrong credentials: the command ends
        except (BackfillError, EncodeError) as exc:
            if isinstance(exc, BackfillError):
                self.database.failed(str(exc))
            self._close_reader()
            logger.warning("%s/%s: gap repair failed: %s", stream, writer, exc)
            self._unrepaired(repair, top, "could not be read")
            return
        finally:
            if reporter is not None:
                reporter.stop()
        stats = self.stats
        stats.gap_rows += rows
        stats.gap_tokens += to_token - from_token
        m = self._metrics
        m.bridge_gaps.labels(stream, "repaired").inc()
        m.bridge_gap_rows.labels(stream).inc(rows)
        m.bridge_gap_tokens.labels(stream).inc(to_token - from_token)
        logger.info(
            "%s/%s: repaired tokens (%d, %d] from the database (%d rows)",
            stream,
            writer,
            from_token,
            to_token,
            rows,
        )

    def _unrepaired(
        self,
        gap: Repair | Unrepaired,
        from_token: int,
        why: str = "cannot be read back",
    ) -> None:
        """Count and log the writer's tokens in (from_token, gap.to_token] as lost."""
        self.stats.unrepaired_gaps += 1
        self._metrics.bridge_gaps.labels(gap.stream, "unrepaired").inc()
        logger.warning(
            "%s/%s: tokens (%d, %d] may be missing and %s",
            gap.stream,
            gap.writer,
            from_token,
            gap.to_token,
            why,
        )

    def _reader_or_none(self) -> BackfillReader | None:
        if self._reader is None and self._open_reader is not None:
            try:
                self._reader = self._open_reader()
            except ConfigError:
                raise  # wrong --db settings: not retried, the command ends
            except BackfillError as exc:
                self.database.failed(str(exc))
                logger.warning("cannot open the database for gap repair: %s", exc)
                return None
            self.database.succeeded()
        return self._reader

    def _close_reader(self) -> None:
        if self._reader is not None:
            try:
                self._reader.close()
            except AdapterError:
                logger.debug("closing a failed database reader", exc_info=True)
            self._reader = None

    def _on_user_sync(self, command: UserSyncCommand, received_s: float) -> None:
        actions = self._presence.user_sync(
            command.instance_id,
            command.user_id,
            command.device_id,
            is_syncing=command.is_syncing,
            since_ms=command.last_sync_ms,
            now_ms=self._now_ms(),
        )
        self._apply_presence(actions, received_s)
        self._tie(command.instance_id, received_s)

    def _tie(self, instance_id: str, received_s: float) -> None:
        """Tie the instance to the connections that may have published its line."""
        if self._clients is None:
            return
        listed = self._client_list
        if listed is None or listed[1] < received_s:
            # One list serves every line read before it (a burst of USER_SYNC).
            if time.monotonic() - received_s > _TIE_WITHIN_S:
                return  # too late to be sure the publisher still looks recent
            listed = self._client_list = self._list_clients()
        if listed is not None and listed[1] - received_s <= _TIE_WITHIN_S:
            self._presence.publishers_seen(instance_id, listed[0])

    def _list_clients(self) -> tuple[ClientList, float] | None:
        listed = self._clients.list() if self._clients is not None else None
        if listed is not None:
            self.stats.client_lists += 1
        return listed

    def _presence_tick(self, now_s: float) -> None:
        """Heartbeats and windows; every ``probe_interval_s``, closed connections."""
        self._apply_presence(self._presence.tick(self._now_ms()))
        if self._clients is None or now_s < self._next_probe:
            return
        if not self._subscriber.connected:
            return  # Redis is down: the subscriber reports that; nothing to judge
        self._next_probe = now_s + self._probe_interval_s
        listed = self._list_clients()
        if listed is not None:
            self._client_list = listed
            self._apply_presence(self._presence.connections_listed(listed[0]))

    def _on_presence_rows(self, rows: Sequence[Row]) -> None:
        """The presence writer's rows: liveness evidence, or users gone offline."""
        now_ms = self._now_ms()
        for row in rows:
            if isinstance(row, PresenceRow):
                self._apply_presence(
                    self._presence.presence_row(
                        row.user_id, row.state, row.last_user_sync_ts, now_ms
                    )
                )

    def _apply_presence(
        self, actions: Sequence[Publish | Gone], received_s: float | None = None
    ) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self._publisher.publish(action.snapshot, received_s=received_s)
            else:
                # A bridged Synapse has no presence writer of ours: the bridge
                # removes the key itself, so readers drop it at once and compaction
                # forgets it.
                logger.info(
                    "presence instance %s left (%s)", action.instance_id, action.reason
                )
                self._producer.produce(
                    self._presence_topic,
                    None,
                    key=topics.presence_key(action.instance_id),
                    headers=[(topics.HEADER_COMMAND, TOMBSTONE_HEADER)],
                )
                self._metrics.presence_published.labels("tombstone").inc()

    def _dead_letter(self, message: RedisMessage, reason: str) -> None:
        self.stats.parse_failures += 1
        self._metrics.bridge_parse_failures.inc()
        masked_reason = mask_access_tokens(reason)
        line = message.line
        if message.channel.endswith("/USER_IP"):
            # Everything on this channel carries tokens, whatever its command name,
            # and the reason may quote a fragment of the line: keep no string of it.
            line = mask_user_ip_line(line)
            if '"' in masked_reason:
                masked_reason = masked_reason.split(":", 1)[0]
        # Acknowledged before the bridge reads on: the line is gone from Redis.
        self._dead_letters.write(
            mask_access_tokens(line).encode("utf-8", "replace"),
            key=message.channel,
            reason=masked_reason,
            source=f"redis:{message.channel}",
            location={"redis_channel": message.channel},
            counted_as=(self._dead_letters.topic, "parse"),
        )
        logger.warning(
            "unparseable line on %s written to %s: %s",
            message.channel,
            self._dead_letters.topic,
            masked_reason,
        )
