"""What a replication consumer follows and how: :class:`ConsumerOptions` and its defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from adapter.core.catchup import CatchUp, StartFrom
from adapter.runtime.stream_worker import HandlerPolicy

__all__ = [
    "CatchUp",
    "ConsumerOptions",
    "StartFrom",
]


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """What a replication consumer follows and how.

    Attributes:
        prefix: the topic prefix (``synapse.<server_name>``).
        instance_name: this consumer's name; its group is ``<prefix>.<instance_name>``.
        streams: the streams to follow.
        start_from: ``committed`` (default: resume, see ``catch_up``), ``latest``
            (ignore commits, start at the head), ``earliest`` (replay Kafka).
        catch_up: how a resumed stream with a database source reads what it missed:
            ``database`` (default: skip Kafka to the pinned head, read the latest
            state from the database, as Synapse does) or ``kafka`` (replay Kafka from
            the committed offset, read only the tokens Kafka lacks from the
            database); see :mod:`adapter.core.catchup`.
        commit_interval_s: how often finished work is committed.
        poll_batch: records fetched per poll.
        max_batches: per-stream queue bound, in poll batches (backpressure).
        handler_policy: ``stop`` or ``dead-letter`` for a handler that keeps failing.
        handler_retries: handler attempts before the policy applies.
        shutdown_timeout_s: how long in-flight handlers may take on shutdown.
        fatal_attempts: setup attempts before an error that will not heal by itself
            (authentication, authorization) ends the run.
        kafka_extra: extra librdkafka properties for the consumer.
    """

    prefix: str
    instance_name: str
    streams: tuple[str, ...]
    start_from: StartFrom = "committed"
    catch_up: CatchUp = "database"
    commit_interval_s: float = 1.0
    poll_batch: int = 1000
    max_batches: int = 64
    handler_policy: HandlerPolicy = "stop"
    handler_retries: int = 5
    shutdown_timeout_s: float = 30.0
    fatal_attempts: int = 3
    kafka_extra: Mapping[str, str] = field(default_factory=dict)
