"""Topic administration and group offsets through confluent's ``AdminClient``.

``ensure_topics`` creates missing topics with their expected settings and, for
existing ones, reports what differs (it does not silently rewrite an operator's
changes; ``alter=True`` applies the expected configs). ``describe_topics`` returns what
exists so the CLI can print it; secrets never appear there because topic configs hold
none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException
from confluent_kafka import TopicPartition as _TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from adapter.core.config import KafkaSettings
from adapter.core.errors import KafkaIOError
from adapter.io.kafka.client import (
    COORDINATOR_SETTLING,
    client_log,
    config_error,
    where,
)

__all__ = ["Admin", "ExpectedTopic", "TopicState"]

logger = logging.getLogger(__name__)


class ExpectedTopic(Protocol):
    """What ``ensure_topics`` needs to know of a topic (``topics.TopicSpec`` fits)."""

    @property
    def name(self) -> str: ...  # noqa: D102
    @property
    def partitions(self) -> int: ...  # noqa: D102
    @property
    def config(self) -> Mapping[str, str]: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as the broker has it: partition count and the configs we care about."""

    name: str
    exists: bool
    partitions: int
    config: Mapping[str, str]


#: Refusals that mean "not allowed to look", not "broken".
_NOT_AUTHORIZED = frozenset(
    {"TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED"}
)


def _error(exc: BaseException, what: str) -> KafkaIOError:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError):
        return KafkaIOError(
            f"{what}: {err.str()}", code=err.name(), retriable=err.retriable()
        )
    return KafkaIOError(f"{what}: {exc}")


class Admin:
    """Wraps ``AdminClient``.

    Args:
        settings: how to reach the cluster.
        timeout_s: how long each admin request may take.
    """

    def __init__(self, settings: KafkaSettings, *, timeout_s: float = 30.0) -> None:
        self._timeout_s = timeout_s
        self._where = where(settings)
        try:
            conf: dict[str, Any] = {**settings.to_librdkafka(), "logger": client_log()}
            self._client = AdminClient(conf)
        except KafkaException as exc:
            # Construction fails only on configuration: retrying cannot help.
            raise config_error(exc, settings) from exc

    def cluster_id(self) -> str:
        """The cluster's ID; also proves the broker answers metadata requests.

        Raises:
            KafkaIOError: no broker answered within the timeout; the message names
                the bootstrap servers (``cannot reach Kafka at ...``).
        """
        try:
            meta = self._client.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise _error(
                exc,
                f"cannot reach Kafka at {self._where} within {self._timeout_s:g} s",
            ) from exc
        return str(meta.cluster_id)

    def _result(self, future: Any, what: str) -> Any:
        """``future.result()`` within the timeout; every failure a KafkaIOError."""
        try:
            return future.result(timeout=self._timeout_s)
        except KafkaException as exc:
            raise _error(exc, what) from exc
        except FutureTimeout as exc:
            raise KafkaIOError(
                f"{what}: no answer from Kafka at {self._where} within "
                f"{self._timeout_s:g} s",
                retriable=True,
            ) from exc

    def existing_topics(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` exist, from metadata alone (any READ or WRITE grant will do)."""
        try:
            meta = self._client.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise _error(exc, "cannot list topics") from exc
        return {n for n in names if n in meta.topics and meta.topics[n].error is None}

    def max_message_bytes(self, names: Sequence[str]) -> dict[str, int]:
        """Each topic's ``max.message.bytes``, for those this principal may describe.

        Best effort: a principal without DescribeConfigs (a bridge's, say) gets an
        empty answer, not an error; the broker still enforces the limit.
        """
        futures = self._client.describe_configs(
            [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names],
            request_timeout=self._timeout_s,
        )
        limits: dict[str, int] = {}
        for resource, future in futures.items():
            try:
                entries = self._result(future, f"cannot describe {resource.name}")
            except KafkaIOError as exc:
                if exc.code in _NOT_AUTHORIZED:
                    continue
                raise
            entry = entries.get("max.message.bytes")
            if entry is not None and entry.value is not None:
                limits[resource.name] = int(entry.value)
        return limits

    def describe_topics(self, names: Sequence[str]) -> dict[str, TopicState]:
        """Partition count and every config of each named topic (missing ones too)."""
        try:
            meta = self._client.list_topics(timeout=self._timeout_s)
        except KafkaException as exc:
            raise _error(exc, "cannot list topics") from exc
        states: dict[str, TopicState] = {}
        present = [
            n for n in names if n in meta.topics and meta.topics[n].error is None
        ]
        configs: dict[str, dict[str, str]] = {}
        if present:
            futures = self._client.describe_configs(
                [ConfigResource(ConfigResource.Type.TOPIC, n) for n in present],
                request_timeout=self._timeout_s,
            )
            for resource, future in futures.items():
                entries = self._result(future, f"cannot describe {resource.name}")
                configs[resource.name] = {
                    k: str(v.value) for k, v in entries.items() if v.value is not None
                }
        for name in names:
            if name in configs:
                states[name] = TopicState(
                    name, True, len(meta.topics[name].partitions), configs[name]
                )
            else:
                states[name] = TopicState(name, False, 0, {})
        return states

    def create_topics(self, topics: Sequence[ExpectedTopic]) -> list[str]:
        """Create the given topics; returns the names created (existing ones are skipped)."""
        if not topics:
            return []
        new = [
            NewTopic(t.name, num_partitions=t.partitions, config=dict(t.config))
            for t in topics
        ]
        futures = self._client.create_topics(new, request_timeout=self._timeout_s)
        created = []
        for name, future in futures.items():
            try:
                future.result(timeout=self._timeout_s)
                created.append(name)
            except FutureTimeout as exc:
                raise KafkaIOError(
                    f"cannot create topic {name}: no answer from Kafka at "
                    f"{self._where} within {self._timeout_s:g} s",
                    retriable=True,
                ) from exc
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if (
                    isinstance(err, KafkaError)
                    and err.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                raise _error(exc, f"cannot create topic {name}") from exc
        return created

    def alter_configs(self, name: str, config: Mapping[str, str]) -> None:
        """Set these configs on a topic (incrementally; others stay as they are)."""
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                for k, v in config.items()
            ],
        )
        futures = self._client.incremental_alter_configs([resource])
        for future in futures.values():
            self._result(future, f"cannot alter configs of {name}")

    def group_offsets(
        self, group_id: str
    ) -> dict[tuple[str, int], tuple[int, str | None]]:
        """A group's committed ``(offset, metadata)`` per ``(topic, partition)``.

        Works whether or not the group's members are running. A coordinator that is
        still loading (a broker that just started) is asked again until the
        request timeout.

        Raises:
            KafkaIOError: the broker refused or did not answer in time.
        """
        deadline = time.monotonic() + self._timeout_s
        delay = 0.05
        while True:
            try:
                return self._group_offsets_once(group_id)
            except KafkaIOError as exc:
                if exc.code not in COORDINATOR_SETTLING or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)

    def _group_offsets_once(
        self, group_id: str
    ) -> dict[tuple[str, int], tuple[int, str | None]]:
        request = [ConsumerGroupTopicPartitions(group_id)]
        futures = self._client.list_consumer_group_offsets(
            request, request_timeout=self._timeout_s
        )
        out: dict[tuple[str, int], tuple[int, str | None]] = {}
        for future in futures.values():
            result = self._result(future, f"cannot list offsets of group {group_id}")
            tp: _TopicPartition
            for tp in result.topic_partitions or []:
                if tp.offset >= 0:
                    out[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or None)
        return out

    def list_groups(self) -> list[str]:
        """Every consumer group ID the cluster knows."""
        future = self._client.list_consumer_groups(request_timeout=self._timeout_s)
        result = self._result(future, "cannot list consumer groups")
        return sorted(g.group_id for g in result.valid or [] if g.group_id)
