"""Every metric synkafka exports: names, help texts, bounded labels, exposition.

Pure: each test builds ``Metrics`` on a fresh ``CollectorRegistry`` and never opens a
socket.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from adapter.io.metrics import LATENCY_BUCKETS_S, HistogramBatch, Metrics, render_latest

# Every label name a metric may carry. Each has a bounded set of values: protocol
# names (stream, command), deployment names (writer, topic, component), partitions,
# or a short fixed vocabulary (source, reason, outcome, kind).
ALLOWED_LABELS = frozenset(
    {
        "command",
        "component",
        "kind",
        "outcome",
        "partition",
        "reason",
        "source",
        "stream",
        "topic",
        "writer",
    }
)
# Unbounded or secret values that must never become labels.
FORBIDDEN_LABELS = frozenset(
    {
        "user",
        "user_id",
        "device",
        "device_id",
        "access_token",
        "ip",
        "room_id",
        "event_id",
    }
)


def _wrappers(metrics: Metrics) -> dict[str, MetricWrapperBase]:
    return {
        attr: value
        for attr, value in vars(metrics).items()
        if isinstance(value, MetricWrapperBase)
    }


def test_metrics_build_on_fresh_registries_without_clashing() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first)
    Metrics(second)  # a second process-wide set would raise on a shared registry
    assert list(first.collect()) != []


def test_every_metric_is_named_synkafka_and_exported() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    wrappers = _wrappers(metrics)
    assert len(wrappers) >= 30
    families = {family.name for family in registry.collect()}
    for attr, wrapper in wrappers.items():
        assert wrapper._name.startswith("synkafka_"), attr
        assert wrapper._name in families, attr


def test_every_metric_has_a_real_help_text() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        text = family.documentation.strip()
        assert text, family.name
        assert text != family.name, family.name
        assert len(text.split()) >= 3, family.name


def test_counters_are_declared_without_the_total_suffix() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for family in registry.collect():
        if family.type == "counter":
            assert not family.name.endswith("_total"), family.name


def test_labels_come_from_the_bounded_set() -> None:
    metrics = Metrics(CollectorRegistry())
    for attr, wrapper in _wrappers(metrics).items():
        labels = set(wrapper._labelnames)
        assert labels <= ALLOWED_LABELS, (attr, labels - ALLOWED_LABELS)
        assert not labels & FORBIDDEN_LABELS, attr


def test_histograms_use_the_latency_buckets() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.handler_duration.labels(stream="events").observe(0.003)
    metrics.bridge_lag.observe(0.2)
    for name in ("synkafka_handler_duration_seconds", "synkafka_bridge_lag_seconds"):
        family = next(f for f in registry.collect() if f.name == name)
        bounds = sorted(
            float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")
        )
        assert bounds == [*LATENCY_BUCKETS_S, float("inf")]


def test_render_latest_gives_the_text_exposition() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.commands_in.labels(command="RDATA", stream="events").inc(3)
    body, content_type = render_latest(registry)
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "# HELP synkafka_commands_in_total " in text
    assert 'synkafka_commands_in_total{command="RDATA",stream="events"} 3.0' in text


def _histogram_samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    out = {}
    for family in registry.collect():
        if family.name == "synkafka_handler_duration_seconds":
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    out[(sample.name, sample.labels.get("le", ""))] = sample.value
    return out


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.sampled_from(LATENCY_BUCKETS_S),  # exactly on a bound
                st.floats(0, 60, allow_nan=False),
            ),
            max_size=20,
        ),
        max_size=4,
    )
)
def test_a_histogram_batch_exports_what_observe_would(
    batches: list[list[float]],
) -> None:
    plain, batched = CollectorRegistry(), CollectorRegistry()
    direct = Metrics(plain).handler_duration.labels("events")
    batch = HistogramBatch(Metrics(batched).handler_duration.labels("events"))
    assert not batch.direct, "the batched path is live on this prometheus_client"
    for values in batches:
        for value in values:
            direct.observe(value)
            batch.observe(value)
        batch.flush()
        got, want = _histogram_samples(batched), _histogram_samples(plain)
        # Counts exactly; the sum up to float addition order.
        key = ("synkafka_handler_duration_seconds_sum", "")
        assert got.pop(key) == pytest.approx(want.pop(key))
        assert got == want


def test_a_histogram_batch_without_the_internals_observes_directly() -> None:
    seen: list[float] = []

    class Bare:
        def observe(self, amount: float) -> None:
            seen.append(amount)

    batch = HistogramBatch(Bare())
    assert batch.direct
    batch.observe(0.5)
    batch.flush()
    assert seen == [0.5]
