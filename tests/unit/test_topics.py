"""Topic names, keys, specs and diffs (adapter/core/topics.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from adapter.core import topics
from adapter.core.errors import ConfigError
from adapter.core.topics import TopicSpec

PREFIX = "synapse.example.com"


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("example.com", "synapse.example.com"),
        ("example.com:8448", "synapse.example.com_8448"),
        ("[::1]:8448", "synapse.___1__8448"),
    ],
)
def test_default_prefix_replaces_illegal_characters(
    server_name: str, expected: str
) -> None:
    assert topics.default_prefix(server_name) == expected


def test_default_prefix_rejects_empty_server_name() -> None:
    with pytest.raises(ConfigError):
        topics.default_prefix("")


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: topics.stream_topic(PREFIX, "events"), f"{PREFIX}.stream.events"),
        (
            lambda: topics.stream_topic(PREFIX, "un_partial_stated_room"),
            f"{PREFIX}.stream.un_partial_stated_room",
        ),
        (lambda: topics.presence_topic(PREFIX), f"{PREFIX}.presence.syncs"),
        (lambda: topics.positions_topic(PREFIX), f"{PREFIX}.positions"),
        (lambda: topics.commands_topic(PREFIX), f"{PREFIX}.commands"),
        (lambda: topics.user_ip_topic(PREFIX), f"{PREFIX}.user_ip"),
        (lambda: topics.dlq_topic(PREFIX), f"{PREFIX}.dlq"),
        (
            lambda: topics.consumer_group(PREFIX, "synchrotron1"),
            f"{PREFIX}.synchrotron1",
        ),
        (lambda: topics.stream_key("event_persister1"), "event_persister1"),
        (lambda: topics.presence_key("AbCdE"), "AbCdE"),
        (lambda: topics.position_key("events", "master"), "events/master"),
        (lambda: topics.user_ip_key("@bob:example.com"), "@bob:example.com"),
        (lambda: topics.command_key("REPLICATE"), "REPLICATE"),
        (lambda: topics.command_key("FEDERATION_ACK"), "FEDERATION_ACK"),
    ],
)
def test_builders_produce_the_documented_names(
    build: Callable[[], str], expected: str
) -> None:
    assert build() == expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: topics.stream_topic("bad prefix", "events"),
        lambda: topics.stream_topic("", "events"),
        lambda: topics.stream_topic(PREFIX, "ev/ents"),
        lambda: topics.stream_topic(PREFIX, ""),
        lambda: topics.stream_topic("p" * 240, "events"),
        lambda: topics.presence_topic("ü"),
        lambda: topics.consumer_group(PREFIX, ""),
        lambda: topics.consumer_group(PREFIX, "two words"),
        lambda: topics.consumer_group("a:b", "worker"),
        lambda: topics.stream_key(""),
        lambda: topics.presence_key(""),
        lambda: topics.position_key("events", ""),
        lambda: topics.position_key("a/b", "master"),
        lambda: topics.user_ip_key(""),
        lambda: topics.command_key(""),
        lambda: topics.parse_position_key("events"),
        lambda: topics.parse_position_key("/master"),
        lambda: topics.parse_position_key("events/"),
    ],
)
def test_illegal_names_raise_config_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a", True),
        ("a" * 249, True),
        ("a" * 250, False),
        ("", False),
        (".", False),
        ("..", False),
        ("a.b_c-D9", True),
        ("a b", False),
        ("a:b", False),
    ],
)
def test_validate_topic_name_follows_kafka_rules(name: str, ok: bool) -> None:
    if ok:
        assert topics.validate_topic_name(name) == name
    else:
        with pytest.raises(ConfigError):
            topics.validate_topic_name(name)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        (f"{PREFIX}.stream.events", "events"),
        (f"{PREFIX}.stream.un_partial_stated_event", "un_partial_stated_event"),
        (f"{PREFIX}.stream.", None),
        (f"{PREFIX}.presence.syncs", None),
        ("synapse.other.org.stream.events", None),
        (f"{PREFIX}.stream.bad name", None),
    ],
)
def test_stream_of_topic_inverts_stream_topic(topic: str, expected: str | None) -> None:
    assert topics.stream_of_topic(PREFIX, topic) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("events/master", ("events", "master")),
        ("caches/worker/with/slashes", ("caches", "worker/with/slashes")),
    ],
)
def test_parse_position_key_splits_at_the_first_slash(
    key: str, expected: tuple[str, str]
) -> None:
    assert topics.parse_position_key(key) == expected


def test_position_key_round_trips() -> None:
    assert topics.parse_position_key(topics.position_key("receipts", "w1")) == (
        "receipts",
        "w1",
    )


def test_header_names_are_distinct_constants() -> None:
    names = {
        topics.HEADER_COMMAND,
        topics.HEADER_STREAM,
        topics.HEADER_WRITER,
        topics.HEADER_DLQ_REASON,
        topics.HEADER_DLQ_SOURCE,
    }
    assert len(names) == 5
    assert topics.HEADER_COMMAND == "command"
    assert topics.HEADER_STREAM == "stream"
    assert topics.HEADER_WRITER == "writer"


def test_topic_specs_cover_every_topic_with_its_policy() -> None:
    specs = topics.topic_specs(PREFIX, ["events", "typing", "events"])
    by_name = {spec.name: spec for spec in specs}
    assert [spec.name for spec in specs] == [
        f"{PREFIX}.stream.events",
        f"{PREFIX}.stream.typing",
        f"{PREFIX}.presence.syncs",
        f"{PREFIX}.positions",
        f"{PREFIX}.commands",
        f"{PREFIX}.user_ip",
        f"{PREFIX}.dlq",
    ]
    events = by_name[f"{PREFIX}.stream.events"]
    assert events.config == {
        "cleanup.policy": "delete",
        "retention.ms": str(7 * 86_400_000),
    }
    assert events.partitions == 1
    for compacted in (f"{PREFIX}.presence.syncs", f"{PREFIX}.positions"):
        config = by_name[compacted].config
        assert config["cleanup.policy"] == "compact"
        # The settings that make compaction happen on a small topic.
        assert {
            "segment.ms",
            "min.cleanable.dirty.ratio",
            "delete.retention.ms",
        } <= set(config)
        assert float(config["min.cleanable.dirty.ratio"]) < 0.5
    assert by_name[f"{PREFIX}.user_ip"].config["retention.ms"] == str(86_400_000)
    assert by_name[f"{PREFIX}.commands"].config["cleanup.policy"] == "delete"
    assert by_name[f"{PREFIX}.dlq"].config["cleanup.policy"] == "delete"
    assert all(spec.purpose for spec in specs)


def test_topic_specs_take_overrides() -> None:
    specs = topics.topic_specs(
        PREFIX,
        ["receipts"],
        stream_partitions=3,
        stream_retention_ms=1000,
        user_ip_retention_ms=2000,
        commands_retention_ms=3000,
        dlq_retention_ms=4000,
    )
    retention = {spec.name: spec.config.get("retention.ms") for spec in specs}
    assert specs[0].partitions == 3
    assert retention[f"{PREFIX}.stream.receipts"] == "1000"
    assert retention[f"{PREFIX}.user_ip"] == "2000"
    assert retention[f"{PREFIX}.commands"] == "3000"
    assert retention[f"{PREFIX}.dlq"] == "4000"


@pytest.mark.parametrize(
    "overrides",
    [
        {"stream_retention_ms": 0},
        {"user_ip_retention_ms": -1},
        {"commands_retention_ms": 0},
        {"dlq_retention_ms": 0},
        {"stream_partitions": 0},
    ],
)
def test_topic_specs_reject_non_positive_numbers(overrides: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        topics.topic_specs(PREFIX, ["events"], **overrides)


def test_topic_spec_config_is_read_only_copy() -> None:
    source = {"cleanup.policy": "delete"}
    spec = TopicSpec("t", 1, source, "x")
    source["cleanup.policy"] = "compact"
    assert spec.config["cleanup.policy"] == "delete"
    with pytest.raises(TypeError):
        spec.config["retention.ms"] = "1"  # type: ignore[index]


def test_topic_spec_validates_its_name() -> None:
    with pytest.raises(ConfigError):
        TopicSpec("bad name", 1)


SPEC = TopicSpec(
    "t",
    2,
    {
        "cleanup.policy": "compact",
        "segment.ms": "3600000",
        "delete.retention.ms": "86400000",
    },
    "x",
)


@pytest.mark.parametrize(
    ("partitions", "config", "expected"),
    [
        (
            2,
            {
                "cleanup.policy": "compact",
                "segment.ms": "3600000",
                "delete.retention.ms": "86400000",
                "retention.ms": "1",  # not in the spec: not compared
            },
            [],
        ),
        (
            3,
            {
                "cleanup.policy": "delete",
                "segment.ms": "3600000",
                "delete.retention.ms": None,
            },
            [
                "t: partitions is 3, expected 2",
                "t: cleanup.policy is delete, expected compact",
                "t: delete.retention.ms is not set, expected 86400000",
            ],
        ),
        (
            2,
            {"cleanup.policy": "compact", "delete.retention.ms": "86400000"},
            ["t: segment.ms is not set, expected 3600000"],
        ),
    ],
)
def test_diff_topic_lists_each_difference(
    partitions: int, config: dict[str, str | None], expected: list[str]
) -> None:
    assert topics.diff_topic(SPEC, partitions, config) == expected


def test_diff_topic_treats_cleanup_policy_as_a_set() -> None:
    spec = TopicSpec("t", 1, {"cleanup.policy": "delete,compact"})
    assert topics.diff_topic(spec, 1, {"cleanup.policy": "compact, delete"}) == []
