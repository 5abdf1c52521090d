"""Topic names, record keys, header names and topic settings: the only place they are built.

Rules this module owns:

* **Rule 1: one builder per name.** Every topic name, record key, consumer group and
  header name is produced here. Other modules never format ``f"{prefix}.stream..."``
  themselves, so a renamed topic is a change to one file.
* **Rule 2: names are validated where they are built.** A topic name contains only
  ``[a-zA-Z0-9._-]``, is at most 249 characters long and is not ``.`` or ``..``
  (Kafka's own rules). A bad prefix or stream name raises
  :class:`~adapter.core.errors.ConfigError` here, before any broker sees it.
* **Rule 3: ordering is per (stream, writer).** A stream topic is keyed by the writer
  instance name, so all records of one writer land in one partition in order, whatever
  the partition count.
* **Rule 4: settings are data.** :func:`topic_specs` returns what every topic should
  look like; :func:`diff_topic` compares that with what a broker reports. Neither
  talks to a broker: ``adapter.io.kafka`` does the I/O.

The layout (docs/architecture.md, "Parts and topics"), with ``<prefix>`` defaulting to
``synapse.<server_name>``:

==============================  ======================  =========================
topic                           key                     policy
==============================  ======================  =========================
``<prefix>.stream.<stream>``    writer instance name    delete, 7 days
``<prefix>.presence.syncs``     instance ID             compact
``<prefix>.positions``          ``<stream>/<writer>``   compact
``<prefix>.commands``           command-specific        delete, 1 day
``<prefix>.user_ip``            user ID                 delete, 1 day, restricted
``<prefix>.dlq``                original key            delete, 14 days
==============================  ======================  =========================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from adapter.core.errors import ConfigError

__all__ = [
    "COMPACTED_TOPIC_CONFIG",
    "DEFAULT_COMMANDS_RETENTION_MS",
    "DEFAULT_DLQ_RETENTION_MS",
    "DEFAULT_STREAM_RETENTION_MS",
    "DEFAULT_USER_IP_RETENTION_MS",
    "HEADER_COMMAND",
    "HEADER_DLQ_REASON",
    "HEADER_DLQ_SOURCE",
    "HEADER_STREAM",
    "HEADER_WRITER",
    "MAX_TOPIC_NAME_LENGTH",
    "TopicSpec",
    "command_key",
    "commands_topic",
    "consumer_group",
    "default_prefix",
    "diff_topic",
    "dlq_topic",
    "feed_group",
    "feed_reader_group",
    "feed_topic",
    "feed_topic_spec",
    "is_feed_reader_group",
    "missing_topic_message",
    "parse_position_key",
    "position_key",
    "positions_topic",
    "presence_key",
    "presence_topic",
    "stream_key",
    "stream_of_topic",
    "stream_topic",
    "topic_specs",
    "user_ip_key",
    "user_ip_topic",
    "validate_topic_name",
]

# -- limits and defaults -------------------------------------------------------------

#: Kafka rejects longer topic names (``Topic.MAX_NAME_LENGTH``).
MAX_TOPIC_NAME_LENGTH = 249

_DAY_MS = 24 * 60 * 60 * 1000

#: Stream topics keep RDATA/POSITION a week: enough for a consumer to replay from
#: Kafka after a long outage; older rows come from the database (docs/architecture.md, the consumer's step 3).
DEFAULT_STREAM_RETENTION_MS = 7 * _DAY_MS
#: USER_IP carries access tokens: keep it as short as the client-IP writer needs.
DEFAULT_USER_IP_RETENTION_MS = 1 * _DAY_MS
#: Control commands (FEDERATION_ACK, REPLICATE, ...) are only meaningful live.
DEFAULT_COMMANDS_RETENTION_MS = 1 * _DAY_MS
#: Dead letters are kept longer so an operator has time to look at them.
DEFAULT_DLQ_RETENTION_MS = 14 * _DAY_MS

# -- header names ---------------------------------------------------------------------

#: The command name (``RDATA``, ``POSITION``, ...), so tools can route without decoding.
HEADER_COMMAND = "command"
#: The stream name of an RDATA/POSITION record.
HEADER_STREAM = "stream"
#: The writer instance name of an RDATA/POSITION record.
HEADER_WRITER = "writer"
#: On a dead letter: why the record could not be handled.
HEADER_DLQ_REASON = "dlq.reason"
#: On a dead letter: where it came from, as ``topic[partition]@offset``.
HEADER_DLQ_SOURCE = "dlq.source"

# -- compaction -----------------------------------------------------------------------

#: Settings that make compaction of the presence and positions topics actually happen.
#:
#: Kafka never compacts the active segment, and by default it waits until half of the
#: log is "dirty" (``min.cleanable.dirty.ratio`` 0.5) with 1 GiB segments rolled weekly.
#: A presence topic (a few hundred bytes per heartbeat) would then never be compacted
#: and a new presence writer would replay every heartbeat ever written. Trade-offs:
#:
#: * ``segment.ms`` = 1 hour: the active segment rolls hourly, so at most an hour of
#:   heartbeats stays uncompacted. Smaller values mean more segment files and more
#:   cleaner work for a topic that changes every minute anyway.
#: * ``min.cleanable.dirty.ratio`` = 0.1: the cleaner runs once 10 % of the log is
#:   superseded records; this costs broker I/O, which is tiny for this topic.
#: * ``max.compaction.lag.ms`` = 6 hours: a rolled segment is compacted within six
#:   hours even when the dirty ratio is not reached.
#: * ``delete.retention.ms`` = 1 day: how long a tombstone (and, with it, the last
#:   proof that an instance is gone) survives after compaction. A consumer that lags
#:   more than this behind misses the tombstone *and* the clear before it: it keeps the
#:   dead instance's last snapshot until its own heartbeat expiry (5 minutes after the
#:   heartbeat in it) removes the instance. For presence that is harmless; for the
#:   positions topic it means a removed writer is still listed until a reader notices.
COMPACTED_TOPIC_CONFIG: Mapping[str, str] = MappingProxyType(
    {
        "cleanup.policy": "compact",
        "segment.ms": str(60 * 60 * 1000),
        "min.cleanable.dirty.ratio": "0.1",
        "max.compaction.lag.ms": str(6 * 60 * 60 * 1000),
        "delete.retention.ms": str(_DAY_MS),
    }
)

_LEGAL_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ILLEGAL_CHAR = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What one topic should look like.

    Attributes:
        name: the full topic name.
        partitions: the partition count to create it with.
        config: topic-level settings (``cleanup.policy``, ``retention.ms``, ...), as
            strings, the form the admin API takes. Stored read-only.
        purpose: one line for ``synkafka topics describe``.
    """

    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    purpose: str = ""

    def __post_init__(self) -> None:
        validate_topic_name(self.name)
        if self.partitions < 1:
            raise ConfigError(
                f"topic {self.name}: partitions must be >= 1, got {self.partitions}"
            )
        # Freeze the mapping too, so a shared spec cannot be changed behind our back.
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


# -- validation ---------------------------------------------------------------------


def validate_topic_name(name: str) -> str:
    """Check a topic name against Kafka's rules.

    Args:
        name: a full topic name.

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: the name is empty, too long, ``.``/``..``, or has a character
            outside ``[a-zA-Z0-9._-]``.
    """
    if name in {"", ".", ".."}:
        raise ConfigError(f"invalid topic name {name!r}")
    if len(name) > MAX_TOPIC_NAME_LENGTH:
        raise ConfigError(
            f"topic name is {len(name)} characters long, Kafka allows {MAX_TOPIC_NAME_LENGTH}: {name!r}"
        )
    if not _LEGAL_NAME.fullmatch(name):
        raise ConfigError(
            f"topic name {name!r} may contain only letters, digits, '.', '_' and '-'"
        )
    return name


def _validate_part(kind: str, value: str) -> str:
    # A prefix or stream name becomes part of topic names, so it obeys the same
    # character rules; the length is checked on the full name.
    if not value or not _LEGAL_NAME.fullmatch(value):
        raise ConfigError(
            f"{kind} {value!r} may contain only letters, digits, '.', '_' and '-'"
        )
    return value


def default_prefix(server_name: str) -> str:
    """Build the default prefix ``synapse.<server_name>``.

    A server name may carry a port (``example.com:8448``), and ``:`` is not legal in a
    topic name: every illegal character becomes ``_``. Two server names that differ
    only in such characters would share topics; set an explicit prefix if that matters.

    Args:
        server_name: the homeserver's ``server_name``.

    Returns:
        The prefix.

    Raises:
        ConfigError: the server name is empty.
    """
    if not server_name:
        raise ConfigError("server_name must not be empty")
    return _validate_part("prefix", "synapse." + _ILLEGAL_CHAR.sub("_", server_name))


# -- topic names --------------------------------------------------------------------


def _topic(prefix: str, suffix: str) -> str:
    return validate_topic_name(f"{_validate_part('prefix', prefix)}.{suffix}")


def stream_topic(prefix: str, stream: str) -> str:
    """Name the topic of one replication stream: ``<prefix>.stream.<stream>``.

    Raises:
        ConfigError: the prefix or stream name is not legal in a topic name, or the
            result is too long.
    """
    return _topic(prefix, "stream." + _validate_part("stream name", stream))


def stream_of_topic(prefix: str, topic: str) -> str | None:
    """Return the stream a topic carries, or ``None`` if it is not a stream topic.

    This is the inverse of :func:`stream_topic` for the given prefix; topics of another
    prefix and the non-stream topics give ``None``.
    """
    head = f"{prefix}.stream."
    if not topic.startswith(head):
        return None
    stream = topic[len(head) :]
    # An empty or illegal remainder cannot have come from stream_topic().
    return stream if stream and _LEGAL_NAME.fullmatch(stream) else None


def presence_topic(prefix: str) -> str:
    """Name the compacted presence topic: ``<prefix>.presence.syncs``."""
    return _topic(prefix, "presence.syncs")


def positions_topic(prefix: str) -> str:
    """Name the compacted positions topic: ``<prefix>.positions``."""
    return _topic(prefix, "positions")


def commands_topic(prefix: str) -> str:
    """Name the control-command topic: ``<prefix>.commands``."""
    return _topic(prefix, "commands")


def user_ip_topic(prefix: str) -> str:
    """Name the USER_IP topic: ``<prefix>.user_ip``."""
    return _topic(prefix, "user_ip")


def dlq_topic(prefix: str) -> str:
    """Name the dead-letter topic: ``<prefix>.dlq``."""
    return _topic(prefix, "dlq")


def feed_topic(prefix: str) -> str:
    """Name the event feed's topic: ``<prefix>.feed.events`` (one record per event)."""
    return _topic(prefix, "feed.events")


def feed_group(prefix: str) -> str:
    """Name the consumer group of ``synkafka feed`` itself: ``<prefix>.feed``.

    One feed process runs per prefix; its transactional ID has the same name, so a
    second one fences the first instead of doubling the feed.
    """
    return _topic(prefix, "feed")


#: The part of a feed reader group's name between the prefix and the reader's name.
_FEED_READER = "feed-reader"


def feed_reader_group(prefix: str, name: str) -> str:
    """Name the consumer group of feed readers called ``name``: ``<prefix>.feed-reader.<name>``.

    Namespaced under the prefix so that ``synkafka lag`` finds it with the other
    groups, and marked as a feed reader so that it reports it on the feed topic.

    Raises:
        ConfigError: ``name`` is empty or not legal in a topic name.
    """
    return _topic(prefix, f"{_FEED_READER}.{_validate_part('group name', name)}")


def is_feed_reader_group(prefix: str, group: str) -> bool:
    """Whether ``group`` is a :func:`feed_reader_group` of ``prefix``."""
    head = f"{prefix}.{_FEED_READER}."
    return group.startswith(head) and len(group) > len(head)


def consumer_group(prefix: str, instance_name: str) -> str:
    """Name the consumer group of one consuming instance: ``<prefix>.<instance_name>``.

    Replication is broadcast, so every instance has its own group.

    Raises:
        ConfigError: the instance name is empty or contains whitespace.
    """
    if not instance_name or any(c.isspace() for c in instance_name):
        raise ConfigError(
            f"instance name {instance_name!r} must be non-empty without whitespace"
        )
    return f"{_validate_part('prefix', prefix)}.{instance_name}"


# -- keys -----------------------------------------------------------------------------


def stream_key(writer: str) -> str:
    """Key an RDATA/POSITION record on a stream topic: the writer instance name."""
    if not writer:
        raise ConfigError("writer instance name must not be empty")
    return writer


def presence_key(instance_id: str) -> str:
    """Key a presence record: the random per-process instance ID."""
    if not instance_id:
        raise ConfigError("instance ID must not be empty")
    return instance_id


def position_key(stream: str, writer: str) -> str:
    """Key a record on the positions topic: ``<stream>/<writer>``.

    Stream names cannot contain ``/`` (they are part of a topic name), so the key
    splits back unambiguously even if a writer name does.
    """
    return f"{_validate_part('stream name', stream)}/{stream_key(writer)}"


def parse_position_key(key: str) -> tuple[str, str]:
    """Split a positions-topic key into ``(stream, writer)``.

    Raises:
        ConfigError: the key has no ``/`` or an empty half.
    """
    stream, sep, writer = key.partition("/")
    if not sep or not stream or not writer:
        raise ConfigError(f"positions key {key!r} is not <stream>/<writer>")
    return stream, writer


def user_ip_key(user_id: str) -> str:
    """Key a USER_IP record: the user ID, so one user's records stay in order."""
    if not user_id:
        raise ConfigError("user ID must not be empty")
    return user_id


def command_key(command: str) -> str:
    """Key a record on the commands topic: the command's name.

    Every command of one name lands on one partition, so each keeps Synapse's order.
    """
    if not command:
        raise ConfigError("command name must not be empty")
    return command


# -- specs ----------------------------------------------------------------------------


def topic_specs(
    prefix: str,
    streams: Iterable[str],
    *,
    stream_partitions: int = 1,
    stream_retention_ms: int = DEFAULT_STREAM_RETENTION_MS,
    user_ip_retention_ms: int = DEFAULT_USER_IP_RETENTION_MS,
    commands_retention_ms: int = DEFAULT_COMMANDS_RETENTION_MS,
    dlq_retention_ms: int = DEFAULT_DLQ_RETENTION_MS,
) -> list[TopicSpec]:
    """Describe every topic synkafka uses under one prefix.

    Args:
        prefix: the topic prefix (see :func:`default_prefix`).
        streams: the stream names; one topic each, in the given order (duplicates
            are ignored).
        stream_partitions: partitions per stream topic. One keeps every writer's
            tokens in one partition's commit metadata; more spread writers out.
        stream_retention_ms: retention of the stream topics.
        user_ip_retention_ms: retention of the USER_IP topic.
        commands_retention_ms: retention of the commands topic.
        dlq_retention_ms: retention of the dead-letter topic.

    Returns:
        The stream topics first, then presence, positions, commands, user_ip, dlq.

    Raises:
        ConfigError: a name is illegal or a number is not positive.
    """
    for label, value in (
        ("stream_retention_ms", stream_retention_ms),
        ("user_ip_retention_ms", user_ip_retention_ms),
        ("commands_retention_ms", commands_retention_ms),
        ("dlq_retention_ms", dlq_retention_ms),
    ):
        if value <= 0:
            raise ConfigError(f"{label} must be positive, got {value}")

    def delete(retention_ms: int) -> dict[str, str]:
        return {"cleanup.policy": "delete", "retention.ms": str(retention_ms)}

    specs = [
        TopicSpec(
            stream_topic(prefix, stream),
            stream_partitions,
            delete(stream_retention_ms),
            f"RDATA and POSITION of stream {stream}, keyed by writer",
        )
        for stream in dict.fromkeys(streams)
    ]
    specs += [
        TopicSpec(
            presence_topic(prefix),
            1,
            COMPACTED_TOPIC_CONFIG,
            "each instance's syncing set and heartbeat, keyed by instance ID",
        ),
        TopicSpec(
            positions_topic(prefix),
            1,
            COMPACTED_TOPIC_CONFIG,
            "latest POSITION per <stream>/<writer>",
        ),
        TopicSpec(
            commands_topic(prefix),
            1,
            delete(commands_retention_ms),
            "FEDERATION_ACK, REMOTE_SERVER_UP, LOCK_RELEASED, tasks, REPLICATE",
        ),
        TopicSpec(
            user_ip_topic(prefix),
            1,
            delete(user_ip_retention_ms),
            "USER_IP keyed by user ID; carries access tokens: restrict by ACL",
        ),
        TopicSpec(
            dlq_topic(prefix),
            1,
            delete(dlq_retention_ms),
            "records that could not be decoded or handled",
        ),
    ]
    return specs


def feed_topic_spec(
    prefix: str,
    *,
    partitions: int,
    retention_ms: int = DEFAULT_STREAM_RETENTION_MS,
) -> TopicSpec:
    """Describe ``<prefix>.feed.events``: room-keyed, ``partitions`` wide.

    Raises:
        ConfigError: the prefix is illegal or a number is not positive.
    """
    if retention_ms <= 0:
        raise ConfigError(f"feed retention must be positive, got {retention_ms}")
    return TopicSpec(
        feed_topic(prefix),
        partitions,
        {"cleanup.policy": "delete", "retention.ms": str(retention_ms)},
        "every event with its content, keyed by room ID (transactional)",
    )


def _normalise(key: str, value: str) -> str | frozenset[str]:
    # The broker may report "compact,delete" for "delete,compact": same policy.
    if key == "cleanup.policy":
        return frozenset(part.strip() for part in value.split(","))
    return value.strip()


def diff_topic(
    expected: TopicSpec,
    actual_partitions: int,
    actual_config: Mapping[str, str | None],
) -> list[str]:
    """Describe how an existing topic differs from its spec.

    Only the settings in the spec are compared; the broker reports many more.

    Args:
        expected: the spec from :func:`topic_specs`.
        actual_partitions: the partition count the broker reports.
        actual_config: the topic's settings as the broker reports them (a value may be
            ``None`` for a sensitive or unknown setting).

    Returns:
        One human-readable line per difference, sorted by setting; empty when the
        topic matches.
    """
    lines: list[str] = []
    if actual_partitions != expected.partitions:
        # Reported both ways: partitions can only be added, never removed, and adding
        # them moves keys to other partitions, so the operator must decide.
        lines.append(
            f"{expected.name}: partitions is {actual_partitions}, expected {expected.partitions}"
        )
    for key in sorted(expected.config):
        want = expected.config[key]
        have = actual_config.get(key)
        if have is None:
            lines.append(f"{expected.name}: {key} is not set, expected {want}")
        elif _normalise(key, have) != _normalise(key, want):
            lines.append(f"{expected.name}: {key} is {have}, expected {want}")
    return lines


def missing_topic_message(topic: str, prefix: str) -> str:
    """The one line for a topic that does not exist: the prefix and how it is set.

    A wrong prefix (another server name) is the usual cause, not missing topics.
    """
    return (
        f"topic {topic} does not exist; the topic prefix in use is {prefix!r} "
        "(--prefix, or synapse.<server_name> from --server-name): check it, or create "
        "the topics with `synkafka topics ensure` and the same prefix"
    )
