"""``synkafka lag``: how far consumer groups are behind, per stream and partition."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    DEFAULT_TIMEOUT_S,
    PrefixOpt,
    ServerNameOpt,
    TimeoutOpt,
    reach_kafka,
    resolve_prefix,
    with_kafka_options,
)
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.rows import STREAM_NAMES
from adapter.io.kafka.consumer import Consumer
from adapter.runtime.lag import LagRow, measure_lag

__all__ = ["format_table", "lag"]


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: list[LagRow]) -> str:
    """The lag rows as an aligned text table."""
    header = (
        "GROUP",
        "STREAM",
        "PART",
        "COMMITTED",
        "HEAD",
        "LAG(MSGS)",
        "LAG(TOKENS)",
        "LAST RECORD AGO(S)",
    )
    cells = [
        (
            r.group,
            r.stream,
            str(r.partition),
            _cell(r.committed),
            str(r.head),
            str(r.lag_messages),
            _cell(r.lag_tokens),
            _cell(r.last_record_age_s),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
        for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    ]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


@app.command()
@with_kafka_options
def lag(
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            "-g",
            help="Consumer group(s) to report (default: every group named <prefix>.*).",
        ),
    ] = None,
    stream: Annotated[
        list[str] | None,
        typer.Option(
            "--stream", "-s", help="Only these streams (default: all with a topic)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """Show how far consumer groups are behind, per stream and partition.

    Columns: committed offset, head, lag in messages and in tokens, time since the
    newest record. Works for groups whose process is down. Feed reader groups
    (synkafka feed-consume) are shown on the feed topic, as stream "feed".
    """
    settings = kafka
    resolved = resolve_prefix(prefix, server_name)
    admin = reach_kafka(settings, timeout)
    reader_group = f"{resolved}.synkafka-lag-reader"
    groups = group or [
        g
        for g in admin.list_groups()
        if g.startswith(resolved + ".") and g != reader_group
    ]
    existing = admin.describe_topics(
        [topics.stream_topic(resolved, s) for s in STREAM_NAMES]
    )
    streams = stream or [
        s for s in STREAM_NAMES if existing[topics.stream_topic(resolved, s)].exists
    ]
    # Metadata and watermark requests queue behind a pending fetch; short fetch
    # waits keep a scan of many partitions fast.
    reader = Consumer(
        settings,
        reader_group,
        client_id="synkafka-lag",
        extra={"fetch.wait.max.ms": "10"},
    )
    # Feed reader groups read the feed topic, not the stream topics.
    feed_groups = [g for g in groups if topics.is_feed_reader_group(resolved, g)]
    stream_groups = [g for g in groups if g not in feed_groups]
    try:
        rows = measure_lag(
            admin,
            reader,
            resolved,
            stream_groups,
            streams,
            feed_groups=feed_groups,
        )
    finally:
        reader.close()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row.to_json()))
    elif rows:
        typer.echo(format_table(rows))
    else:
        typer.echo(
            f"no consumer groups named {resolved}.* and no stream topics", err=True
        )
