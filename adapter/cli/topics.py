"""``synkafka topics ensure | describe``: create and check every topic synkafka uses."""

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

__all__ = ["topics_app"]

topics_app = typer.Typer(
    help="Create and check the topics synkafka uses.", no_args_is_help=True
)
app.add_typer(topics_app, name="topics")

StreamsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--stream", "-s", help="Only these streams (repeatable; default: all)."
    ),
]
PartitionsOpt = Annotated[
    int,
    typer.Option("--partitions", min=1, help="Partitions per stream topic."),
]
RetentionOpt = Annotated[
    float,
    typer.Option("--retention-days", min=0.001, help="Retention of the stream topics."),
]


def _specs(
    prefix: str, streams: list[str] | None, partitions: int, days: float
) -> list[topics.TopicSpec]:
    return topics.topic_specs(
        prefix,
        streams or STREAM_NAMES,
        stream_partitions=partitions,
        stream_retention_ms=int(days * 86_400_000),
    )


@topics_app.command("ensure")
@with_kafka_options
def ensure(
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    stream: StreamsOpt = None,
    partitions: PartitionsOpt = 1,
    retention_days: RetentionOpt = 7.0,
    alter: Annotated[
        bool,
        typer.Option("--alter", help="Also set expected configs on existing topics."),
    ] = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """Create every missing topic with its settings; report the ones that differ."""
    settings = kafka
    specs = _specs(
        resolve_prefix(prefix, server_name), stream, partitions, retention_days
    )
    admin = reach_kafka(settings, timeout)
    states = admin.describe_topics([s.name for s in specs])
    missing = [s for s in specs if not states[s.name].exists]
    with typer.progressbar(
        length=len(missing), label="creating topics", file=None
    ) as bar:
        for spec in missing:
            admin.create_topics([spec])
            bar.update(1)
    for spec in missing:
        typer.echo(f"created  {spec.name} ({spec.partitions} partitions)")
    differing = 0
    for spec in specs:
        state = states[spec.name]
        if not state.exists:
            continue
        diffs = topics.diff_topic(spec, state.partitions, state.config)
        if not diffs:
            typer.echo(f"ok       {spec.name}")
            continue
        if alter:
            admin.alter_configs(spec.name, spec.config)
            typer.echo(f"altered  {spec.name}: " + "; ".join(diffs))
        else:
            differing += 1
            typer.echo(f"differs  {spec.name}: " + "; ".join(diffs))
    if differing:
        typer.echo(
            f"{differing} topic(s) differ; rerun with --alter to apply the expected configs"
        )


@topics_app.command("describe")
@with_kafka_options
def describe(
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    stream: StreamsOpt = None,
    partitions: PartitionsOpt = 1,
    retention_days: RetentionOpt = 7.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """Show each topic: whether it exists, its partitions, and what differs from expected.

    Exits 1 when a topic is missing or differs, so scripts can check a cluster.
    """
    settings = kafka
    specs = _specs(
        resolve_prefix(prefix, server_name), stream, partitions, retention_days
    )
    states = reach_kafka(settings, timeout).describe_topics([s.name for s in specs])
    report = []
    for spec in specs:
        state = states[spec.name]
        diffs = (
            topics.diff_topic(spec, state.partitions, state.config)
            if state.exists
            else []
        )
        report.append(
            {
                "topic": spec.name,
                "exists": state.exists,
                "partitions": state.partitions,
                "expected_partitions": spec.partitions,
                "config": {k: state.config.get(k) for k in spec.config}
                if state.exists
                else {},
                "differences": diffs,
                "purpose": spec.purpose,
            }
        )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        width = max(len(r["topic"]) for r in report)  # type: ignore[arg-type]
        for r in report:
            status = (
                "missing"
                if not r["exists"]
                else ("differs" if r["differences"] else "ok")
            )
            line = f"{r['topic']:<{width}}  {status:<8} partitions={r['partitions']}"
            if r["differences"]:
                line += "  " + "; ".join(r["differences"])  # type: ignore[arg-type]
            typer.echo(line)
    if any(not r["exists"] or r["differences"] for r in report):
        raise typer.Exit(1)
