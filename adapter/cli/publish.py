"""``synkafka publish`` and ``synkafka tail``: write and read stream records by hand.

``publish`` reads its whole input first and checks every line (UTF-8, the line's
syntax, non-negative tokens, a ``batch`` run closed by a token, the record's schema);
only when all of it is valid does it produce anything, so a bad line means nothing was
published. A delivery failure afterwards says which lines the broker acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

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
from adapter.codec.avro_codec import Payload, decode, encode
from adapter.core import topics
from adapter.core.commands import Command, PositionCommand, RdataCommand, parse_line
from adapter.core.config import KafkaSettings
from adapter.core.errors import (
    ConfigError,
    DecodeError,
    DeliveryError,
    EncodeError,
    KafkaIOError,
)
from adapter.core.feed import FeedEvent, feed_event_to_json
from adapter.core.presence_snapshot import PresenceSnapshot
from adapter.core.rows import STREAM_NAMES, row_from_wire, row_to_wire
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.consumer import BEGINNING, END, Consumer, PartitionStart
from adapter.io.kafka.producer import Delivered, DeliveryCallback, Producer
from adapter.runtime.publisher import Publisher

__all__ = [
    "NumberedCommand",
    "decode_lines",
    "line_ranges",
    "parse_numbered",
    "publish",
    "record_to_json",
    "tail",
    "validate",
]


@dataclass(frozen=True, slots=True)
class NumberedCommand:
    """A command read from the input and the line that completed it.

    Attributes:
        line: the 1-based input line (for a Synapse ``batch`` run, the line with the
            token).
        command: the command.
    """

    line: int
    command: Command


def decode_lines(raw_lines: Iterable[bytes]) -> Iterator[str]:
    """Input lines as text, strictly UTF-8 (what Synapse sends).

    Raises:
        ConfigError: a line is not UTF-8 (with its line number and byte column).
    """
    for number, raw in enumerate(raw_lines, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"line {number}: not UTF-8 text (byte {exc.start + 1}: "
                f"{raw[exc.start : exc.start + 1]!r})"
            ) from None


def _json_token(obj: dict[str, Any], key: str) -> int:
    """A token field of a JSON object: a non-negative JSON integer."""
    value = obj[key]
    # bool is an int subclass, and int() would take "5" or 5.9: neither is a token.
    if type(value) is not int:
        raise ValueError(f'"{key}" must be an integer, got {json.dumps(value)[:40]}')
    return value


def _json_command(obj: dict[str, Any], where: str) -> Command:
    kind = str(obj.get("command", "")).upper()
    try:
        if kind == "RDATA":
            stream = str(obj["stream"])
            return RdataCommand(
                stream,
                str(obj["writer"]),
                _json_token(obj, "token"),
                tuple(row_from_wire(stream, row) for row in obj["rows"]),
            )
        if kind == "POSITION":
            return PositionCommand(
                str(obj["stream"]),
                str(obj["writer"]),
                _json_token(obj, "prev"),
                _json_token(obj, "new"),
            )
    except KeyError as exc:
        raise ConfigError(f"{where}: bad {kind} object: no {exc} field") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: bad {kind} object: {exc}") from exc
    raise ConfigError(f'{where}: "command" must be RDATA or POSITION, got {kind!r}')


def _check_tokens(command: Command, where: str) -> None:
    """Refuse negative stream tokens: Synapse's positions start at 1 and only grow."""
    if isinstance(command, RdataCommand):
        tokens = [] if command.token is None else [command.token]
    elif isinstance(command, PositionCommand):
        tokens = [command.prev_token, command.new_token]
    else:
        return
    if any(token < 0 for token in tokens):
        raise ConfigError(f"{where}: a stream token cannot be negative: {tokens}")


def _parse_json_line(line: str, where: str) -> Command:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested too deeply to read") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{where}: a JSON line must be one object")
    return _json_command(obj, where)


def parse_numbered(lines: Iterable[str]) -> Iterator[NumberedCommand]:
    """Commands from JSON objects or Synapse lines, one per input line, numbered.

    JSON: ``{"command": "RDATA", "stream": s, "writer": w, "token": t, "rows": [...]}``
    (rows in Synapse's wire form) or ``{"command": "POSITION", "stream": s, "writer": w,
    "prev": p, "new": n}``; tokens are non-negative JSON integers. Synapse lines
    (``RDATA events master 5 [...]``) may use ``batch`` tokens; rows of one token are
    joined per (stream, writer), and a ``batch`` run must end with a line that has the
    token. Blank lines and ``#`` comments are skipped.

    Raises:
        ConfigError: a line is neither, a token is negative, or the input ends inside
            a ``batch`` run (with the line number).
    """
    # Rows of `batch` lines wait per (stream, writer) for the line with the token,
    # with the number of the run's first line for the error if it never comes.
    pending: dict[tuple[str, str], tuple[int, list[Any]]] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        if line.startswith("{"):
            command = _parse_json_line(line, where)
        else:
            try:
                command = parse_line(line)
            except DecodeError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        _check_tokens(command, where)
        if isinstance(command, RdataCommand):
            key = (command.stream_name, command.instance_name)
            rows = pending.setdefault(key, (number, []))[1]
            rows.extend(command.rows)
            if command.token is not None:
                del pending[key]
                yield NumberedCommand(
                    number, RdataCommand(key[0], key[1], command.token, tuple(rows))
                )
            continue
        if isinstance(command, PositionCommand):
            # Synapse drops a pending batch on POSITION: its rows are re-read.
            pending.pop((command.stream_name, command.instance_name), None)
        yield NumberedCommand(number, command)
    if pending:
        (stream, writer), (first, rows) = min(pending.items(), key=lambda kv: kv[1][0])
        raise ConfigError(
            f"line {first}: RDATA {stream} {writer} batch: the input ends before a "
            f"line with the token for its {len(rows)} row(s)"
        )


def validate(lines: Iterable[str]) -> list[NumberedCommand]:
    """Parse every line and check that every record encodes, before anything is sent.

    Raises:
        ConfigError: the first bad line, named by its number.
    """
    checked = []
    for item in parse_numbered(lines):
        try:
            encode(item.command)
        except EncodeError as exc:
            raise ConfigError(f"line {item.line}: {exc}") from None
        checked.append(item)
    return checked


def line_ranges(numbers: Iterable[int]) -> str:
    """``1-3, 7`` for the line numbers 1, 2, 3 and 7; ``none`` for none."""
    ordered = sorted(set(numbers))
    if not ordered:
        return "none"
    spans: list[list[int]] = [[ordered[0], ordered[0]]]
    for n in ordered[1:]:
        if n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


@dataclass
class _Acks:
    """Which input lines the broker acknowledged (delivery reports, one thread)."""

    lines: set[int] = field(default_factory=set)

    def callback(self, line: int) -> DeliveryCallback:
        def report(error: DeliveryError | None, delivered: Delivered | None) -> None:
            if error is None and delivered is not None:
                self.lines.add(line)

        return report


def _read_source(source: Path | None) -> list[str]:
    """Every line of the file (or stdin), decoded; the only I/O before producing."""
    if source is None:
        return list(decode_lines(sys.stdin.buffer))
    try:
        with source.open("rb") as raw:
            return list(decode_lines(raw))
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}") from None


def _summary(checked: list[NumberedCommand], publisher: Publisher) -> str:
    by_topic = Counter(publisher.topic_for(item.command) for item in checked)
    parts = [f"{n} to {topic}" for topic, n in sorted(by_topic.items())]
    return ", ".join(parts) if parts else "nothing to publish"


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

    The whole input is checked first: one bad line (its number is in the error) and
    nothing is published (exit 2). Then every record is produced and acknowledged;
    the last line says how many went to which topic. If the broker fails (exit 1),
    the error says which lines it acknowledged.
    """
    name = str(source) if source is not None else "stdin"
    try:
        checked = validate(_read_source(source))
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}; nothing was published") from None
    # A producer queues records for an unreachable broker for minutes: find out first
    # (before saying anything, so that failure stays the one line).
    admin = reach_kafka(kafka, timeout)
    resolved = resolve_prefix(prefix, server_name)
    publisher = Publisher(Producer(kafka), resolved)
    # Checked before the first record: a mistyped prefix would otherwise create
    # topics (brokers auto-create by default), and an oversized record would stop
    # the run halfway.
    needed = sorted(
        {publisher.topic_for(item.command) for item in checked}
        | {topics.positions_topic(resolved)}
    )
    try:
        _check_topics_exist(admin, needed, resolved)
        check_sizes(
            checked, admin.max_message_bytes(needed), kafka, publisher.topic_for
        )
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}; nothing was published") from None
    typer.echo(f"{name}: {len(checked)} records, all valid; publishing", err=True)
    acks = _Acks()
    started = time.monotonic()
    try:
        for item in checked:
            publisher.publish(item.command, on_delivery=acks.callback(item.line))
        publisher.flush()
    except KafkaIOError as exc:
        raise _partial_failure(exc, publisher, checked, acks) from exc
    typer.echo(
        f"published {len(checked)} records in {time.monotonic() - started:.2f} s: "
        f"{_summary(checked, publisher)}",
        err=True,
    )


#: librdkafka's default ``message.max.bytes`` (the producer's own record limit).
_PRODUCER_MAX_BYTES = 1_000_000


def _check_topics_exist(admin: Admin, needed: list[str], prefix: str) -> None:
    existing = admin.existing_topics(needed)
    missing = [name for name in needed if name not in existing]
    if missing:
        raise ConfigError(topics.missing_topic_message(missing[0], prefix))


def check_sizes(
    checked: list[NumberedCommand],
    topic_limits: Mapping[str, int],
    kafka: KafkaSettings,
    topic_of: Callable[[Command], str],
) -> None:
    """Refuse the run if a record is certain to be over a size limit.

    Args:
        checked: the validated input.
        topic_limits: ``max.message.bytes`` of the topics whose config could be read.
        kafka: the settings (a ``-X message.max.bytes`` sets the producer limit).
        topic_of: the topic each command goes to.

    Raises:
        ConfigError: the first line whose value alone is over the smaller of the
            topic's ``max.message.bytes`` and the producer's ``message.max.bytes``.
            (The key and headers add a few dozen bytes, so a value just under the
            limit can still be refused while publishing; the error then names the
            lines the broker acknowledged.)
    """
    producer_limit = int(kafka.overrides.get("message.max.bytes", _PRODUCER_MAX_BYTES))
    for item in checked:
        topic = topic_of(item.command)
        limit = min(topic_limits.get(topic, producer_limit), producer_limit)
        size = len(encode(item.command))
        if size > limit:
            which = (
                f"producer message.max.bytes {producer_limit:,}"
                if limit == producer_limit
                else f"{topic} max.message.bytes {limit:,}"
            )
            raise ConfigError(
                f"line {item.line}: its record is {size:,} bytes, over the "
                f"{limit:,} bytes allowed ({which})"
            )


def _partial_failure(
    exc: KafkaIOError,
    publisher: Publisher,
    checked: list[NumberedCommand],
    acks: _Acks,
) -> KafkaIOError:
    """The failure, saying which lines the broker acknowledged and which it did not."""
    # Records queued before the failure may still be acknowledged: wait for their
    # reports so the line lists are exact. The failure itself is raised again here.
    with contextlib.suppress(KafkaIOError):
        publisher.producer.flush(10.0)
    lines = [item.line for item in checked]
    missing = [n for n in lines if n not in acks.lines]
    return type(exc)(
        f"{exc}; published lines: {line_ranges(acks.lines)} "
        f"({len(acks.lines)} of {len(lines)} records); not published: "
        f"{line_ranges(missing)}",
        code=exc.code,
        retriable=exc.retriable,
    )


def record_to_json(command: Payload) -> dict[str, Any]:
    """A decoded record as a JSON-ready dict (rows in Synapse's wire form)."""
    if isinstance(command, FeedEvent):
        return {"command": "FEED_EVENT", **feed_event_to_json(command)}
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
