"""``synkafka publish`` and ``synkafka tail``: write and read stream records by hand."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from adapter import topics
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
from adapter.codec import decode
from adapter.commands import Command, PositionCommand, RdataCommand, parse_line
from adapter.config import KafkaSettings
from adapter.errors import ConfigError, DecodeError
from adapter.kafka.consumer import BEGINNING, END, Consumer, PartitionStart
from adapter.kafka.producer import Producer
from adapter.records import PresenceSnapshot
from adapter.rows import STREAM_NAMES, row_from_wire, row_to_wire
from adapter.runtime.publisher import Publisher

__all__ = ["parse_input", "publish", "record_to_json", "tail"]


def _json_command(obj: dict[str, Any], where: str) -> Command:
    kind = str(obj.get("command", "")).upper()
    try:
        if kind == "RDATA":
            stream = str(obj["stream"])
            return RdataCommand(
                stream,
                str(obj["writer"]),
                int(obj["token"]),
                tuple(row_from_wire(stream, row) for row in obj["rows"]),
            )
        if kind == "POSITION":
            return PositionCommand(
                str(obj["stream"]),
                str(obj["writer"]),
                int(obj["prev"]),
                int(obj["new"]),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad {kind} object: {exc!r}") from exc
    raise ConfigError(f'{where}: "command" must be RDATA or POSITION, got {kind!r}')


def parse_input(lines: IO[str]) -> Iterator[Command]:
    """Commands from JSON objects or Synapse lines, one per input line.

    JSON: ``{"command": "RDATA", "stream": s, "writer": w, "token": t, "rows": [...]}``
    (rows in Synapse's wire form) or ``{"command": "POSITION", "stream": s, "writer": w,
    "prev": p, "new": n}``. Synapse lines (``RDATA events master 5 [...]``) may use
    ``batch`` tokens; rows of one token are joined per (stream, writer).

    Raises:
        ConfigError: a line is neither (with its line number).
    """
    # Rows of `batch` lines wait per (stream, writer) for the line with the token.
    pending: dict[tuple[str, str], list[Any]] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: not valid JSON: {exc.msg}") from exc
            yield _json_command(obj, where)
            continue
        try:
            command = parse_line(line)
        except DecodeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if isinstance(command, RdataCommand):
            key = (command.stream_name, command.instance_name)
            rows = pending.setdefault(key, [])
            rows.extend(command.rows)
            if command.token is not None:
                del pending[key]
                yield RdataCommand(key[0], key[1], command.token, tuple(rows))
        elif isinstance(command, PositionCommand):
            # Synapse drops a pending batch on POSITION: its rows are re-read.
            pending.pop((command.stream_name, command.instance_name), None)
            yield command
        else:
            yield command


@app.command()
@with_kafka_options
def publish(
    source: Annotated[
        Path | None,
        typer.Argument(help="File of JSON objects or Synapse lines (default: stdin)."),
    ] = None,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """Publish RDATA/POSITION (and other commands) read one per line, for scripts and tests.

    Exits non-zero if any record was not acknowledged by the broker.
    """
    settings = kafka
    # A producer queues records for an unreachable broker for minutes: find out first.
    reach_kafka(settings, timeout)
    publisher = Publisher(Producer(settings), resolve_prefix(prefix, server_name))
    count = 0
    started = time.monotonic()
    with source.open(encoding="utf-8") if source else sys.stdin as lines:
        for command in parse_input(lines):
            publisher.publish(command)
            count += 1
    publisher.flush()
    typer.echo(
        f"published {count} records in {time.monotonic() - started:.2f} s", err=True
    )


def record_to_json(command: Command | PresenceSnapshot) -> dict[str, Any]:
    """A decoded record as a JSON-ready dict (rows in Synapse's wire form)."""
    if isinstance(command, RdataCommand):
        return {
            "command": "RDATA",
            "stream": command.stream_name,
            "writer": command.instance_name,
            "token": command.token,
            "rows": [row_to_wire(r) for r in command.rows],
        }
    if isinstance(command, PositionCommand):
        return {
            "command": "POSITION",
            "stream": command.stream_name,
            "writer": command.instance_name,
            "prev": command.prev_token,
            "new": command.new_token,
        }
    if isinstance(command, PresenceSnapshot):
        return {
            "command": "PRESENCE",
            "instance_id": command.instance_id,
            "heartbeat_ms": command.heartbeat_ms,
            "syncing": [
                [d.user_id, d.device_id, d.last_sync_ms] for d in command.syncing
            ],
        }
    return {"command": command.NAME, "line": command.to_line()}


@app.command()
@with_kafka_options
def tail(
    stream: Annotated[
        str, typer.Argument(help="The stream to read (events, receipts...).")
    ],
    from_offset: Annotated[
        int | None,
        typer.Option("--from-offset", help="Start at this offset (default: the end)."),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record kept.")
    ] = False,
    from_token: Annotated[
        int | None,
        typer.Option("--from-token", help="Skip records whose token is below this."),
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", help="Stop before this offset.")
    ] = None,
    max_records: Annotated[
        int | None, typer.Option("--max", help="Stop after this many records.")
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow/--no-follow", help="Keep waiting for new records at the end."
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line.")
    ] = False,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """Decode and print a stream topic's records, for humans (or scripts with --json)."""
    if stream not in STREAM_NAMES:
        raise ConfigError(f"unknown stream {stream!r}")
    settings = kafka
    resolved = resolve_prefix(prefix, server_name)
    topic = topics.stream_topic(resolved, stream)
    reach_kafka(settings, timeout)
    reader = Consumer(
        settings,
        f"{resolved}.synkafka-tail",
        client_id="synkafka-tail",
        extra={"fetch.wait.max.ms": "10"},
    )
    try:
        partitions = reader.partitions(topic)
        if not partitions:
            raise ConfigError(topics.missing_topic_message(topic, resolved))
        heads = {p: reader.watermarks(topic, p)[1] for p in partitions}
        start = BEGINNING if from_beginning else END
        if from_offset is not None:
            start = from_offset
        reader.assign([PartitionStart(topic, p, start) for p in partitions])
        shown = 0
        while True:
            records = reader.poll_batch(500, 0.5)
            if not records and not follow:
                positions_done = all(h == 0 for h in heads.values()) or start == END
                if positions_done or _at_end(reader, topic, partitions):
                    break
            for record in records:
                if to_offset is not None and record.offset >= to_offset:
                    return
                try:
                    command = decode(record.value or b"")
                except DecodeError as exc:
                    typer.echo(f"{record.where}: undecodable: {exc.reason}", err=True)
                    continue
                token = getattr(command, "token", None) or getattr(
                    command, "new_token", None
                )
                if (
                    from_token is not None
                    and isinstance(token, int)
                    and token < from_token
                ):
                    continue
                data = record_to_json(command)
                if as_json:
                    typer.echo(
                        json.dumps(
                            {
                                "offset": record.offset,
                                "partition": record.partition,
                                **data,
                            }
                        )
                    )
                else:
                    typer.echo(
                        f"{record.where} {json.dumps(data, separators=(',', ':'))}"
                    )
                shown += 1
                if max_records is not None and shown >= max_records:
                    return
    finally:
        reader.close()


def _at_end(reader: Consumer, topic: str, partitions: list[int]) -> bool:
    """Whether the reader has consumed up to each partition's current head."""
    committed = reader.positions([(topic, p) for p in partitions])
    return all(
        committed.get(p, 0) >= reader.watermarks(topic, p)[1] for p in partitions
    )
