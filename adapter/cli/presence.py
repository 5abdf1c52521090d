"""``synkafka presence [list] | track``: inspect and feed the compacted presence topic."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from typing import Annotated, Any

import typer

from adapter.cli._app import app
from adapter.cli.common import (
    DEFAULT_TIMEOUT_S,
    InstanceOpt,
    LogLevelOpt,
    PrefixOpt,
    ServerNameOpt,
    TimeoutOpt,
    reach_kafka,
    resolve_prefix,
    setup_logging,
    with_kafka_options,
)
from adapter.cli.consume import install_stop_signals
from adapter.core import topics
from adapter.core.config import KafkaSettings
from adapter.core.errors import ConfigError
from adapter.core.presence import (
    DEFAULT_DEBOUNCE_MS,
    DEFAULT_EXPIRY_MS,
    DEFAULT_HEARTBEAT_INTERVAL_MS,
    DEFAULT_STOP_DELAY_MS,
    InstanceSummary,
    PresenceView,
)
from adapter.io.kafka.consumer import Consumer
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import default_metrics
from adapter.runtime.presence_follower import PresenceFollower
from adapter.runtime.presence_sync import PresenceSync, new_instance_id
from adapter.runtime.publisher import Publisher

__all__ = ["presence_app"]

# A Matrix user ID: "@", a localpart of printable ASCII without ":" (the spec's
# historical grammar, which Synapse still accepts), ":", then the server name: a
# DNS name, IPv4 or [IPv6] literal, with an optional port. 255 bytes at most.
_USER_ID_RE = re.compile(
    r"@[\x21-\x39\x3b-\x7e]+:(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_USER_ID_MAX_BYTES = 255

presence_app = typer.Typer(
    help="List who syncs where (default), or hold syncs open as a tracker would.",
    invoke_without_command=True,
)
app.add_typer(presence_app, name="presence")

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document instead of a table.")
]
ExpiryOpt = Annotated[
    float,
    typer.Option(
        "--expiry",
        min=0.001,
        help="Seconds without a heartbeat after which an instance counts as dead.",
    ),
]


@presence_app.callback()
@with_kafka_options
def presence(
    ctx: typer.Context,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    expiry: ExpiryOpt = DEFAULT_EXPIRY_MS / 1000,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """List the live instances on the presence topic: heartbeat age and syncing users.

    Replays the compacted topic up to its current end and prints the view a presence
    writer would have now. Read-only: it never writes tombstones. The same as
    `synkafka presence list`.
    """
    if ctx.invoked_subcommand is not None:
        # Options of the group do not reach a sub-command: refuse rather than ignore.
        given = [
            p.name
            for p in ctx.command.params
            if p.name and _from_command_line(ctx, p.name)
        ]
        if given:
            raise ConfigError(
                f"put options after the sub-command: synkafka presence "
                f"{ctx.invoked_subcommand} --{given[0].replace('_', '-')} ..."
            )
        return
    _list(dict(ctx.params), kafka)


@presence_app.command("list")
@with_kafka_options
def list_instances(
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    as_json: JsonOpt = False,
    expiry: ExpiryOpt = DEFAULT_EXPIRY_MS / 1000,
    timeout: TimeoutOpt = DEFAULT_TIMEOUT_S,
    *,
    kafka: KafkaSettings,
) -> None:
    """List the live instances on the presence topic: heartbeat age and syncing users."""
    _list(dict(locals()), kafka)


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _list(params: dict[str, Any], settings: KafkaSettings) -> None:
    prefix = resolve_prefix(params["prefix"], params["server_name"])
    reach_kafka(settings, params["timeout"])
    reader = Consumer(
        settings,
        f"{prefix}.presence-list-{new_instance_id(8)}",
        client_id="synkafka-presence-list",
        extra={"auto.offset.reset": "earliest"},
    )
    follower = PresenceFollower(
        reader, prefix, expiry_ms=max(1, int(params["expiry"] * 1000))
    )
    try:
        stats = follower.replay()
        summaries = follower.instances()
        counts = follower.counts()
    finally:
        follower.close()
    if params["as_json"]:
        document = {
            "topic": follower.topic,
            "records_replayed": stats.records,
            "instances": [_instance_json(s) for s in summaries],
            "syncing_users": counts.users,
            "syncing_devices": counts.devices,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    typer.echo(
        f"{follower.topic}: {counts.instances} instances, {counts.users} users "
        f"syncing on {counts.devices} devices ({stats.records} records replayed)"
    )
    if summaries:
        typer.echo(_table(summaries))


def _instance_json(summary: InstanceSummary) -> dict[str, Any]:
    return {
        "instance_id": summary.instance_id,
        "instance_name": summary.instance_name,
        "heartbeat_age_ms": summary.heartbeat_age_ms,
        "devices": summary.devices,
        "users": list(summary.users),
    }


def _table(summaries: list[InstanceSummary], max_users: int = 5) -> str:
    rows = [("INSTANCE ID", "NAME", "HEARTBEAT AGE", "DEVICES", "USERS")]
    for s in summaries:
        users = ", ".join(s.users[:max_users])
        if len(s.users) > max_users:
            users += f", ... ({len(s.users) - max_users} more)"
        rows.append(
            (
                s.instance_id,
                s.instance_name or "-",
                f"{s.heartbeat_age_ms / 1000:.1f} s",
                str(s.devices),
                users or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def _check_user_ids(users: list[str]) -> None:
    """Refuse a --user that is not a Matrix user ID, before anything is published.

    An empty or malformed ID would be announced as syncing and reach every
    consumer's presence view, where no Synapse user can ever match it.

    Raises:
        ConfigError: one of them is not ``@localpart:server``.
    """
    for user in users:
        if (
            _USER_ID_RE.fullmatch(user) is None
            or len(user.encode("utf-8")) > _USER_ID_MAX_BYTES
        ):
            raise ConfigError(
                f"--user {user!r} is not a Matrix user ID (@localpart:server)"
            )


def _pairs(users: list[str], devices: list[str]) -> list[tuple[str, str | None]]:
    if not devices:
        return [(u, None) for u in users]
    if len(devices) == 1:
        return [(u, devices[0]) for u in users]
    if len(devices) != len(users):
        raise ConfigError(
            "give no --device, one for every --user, or exactly one per --user"
        )
    return list(zip(users, devices, strict=True))


@presence_app.command("track")
@with_kafka_options
def track(
    user: Annotated[
        list[str],
        typer.Option(
            "--user", "-u", help="A user to hold a sync open for (repeatable)."
        ),
    ],
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            "-d",
            help="Device of the sync: one for all users, or one per --user in order "
            "(default: none).",
        ),
    ] = None,
    presence_writer: Annotated[
        bool,
        typer.Option(
            "--presence-writer",
            help="Act as the presence writer: publish nothing, keep a local view.",
        ),
    ] = False,
    instance_name: InstanceOpt = "",
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            min=0.001,
            help="Seconds between heartbeats of an unchanged set.",
        ),
    ] = DEFAULT_HEARTBEAT_INTERVAL_MS / 1000,
    debounce: Annotated[
        float,
        typer.Option("--debounce", min=0, help="Seconds a change is held back."),
    ] = DEFAULT_DEBOUNCE_MS / 1000,
    stop_delay: Annotated[
        float,
        typer.Option(
            "--stop-delay", min=0, help="Seconds a stopped sync still counts."
        ),
    ] = DEFAULT_STOP_DELAY_MS / 1000,
    server_name: ServerNameOpt = None,
    prefix: PrefixOpt = None,
    log_level: LogLevelOpt = "WARNING",
    *,
    kafka: KafkaSettings,
) -> None:
    """Hold syncs open under a fresh instance ID until SIGTERM or Ctrl-C, then clear.

    Prints one JSON line when the instance is announced ({"instance_id": ...}) and one
    when the clear is acknowledged ({"cleared": ...}). For demos and tests.
    """
    setup_logging(log_level)
    _check_user_ids(user)
    pairs = _pairs(user, device or [])
    name = instance_name or "presence-track"
    stop = threading.Event()
    install_stop_signals(stop)
    timing: dict[str, Any] = {
        "stop_delay_ms": int(stop_delay * 1000),
        "debounce_ms": int(debounce * 1000),
        "heartbeat_interval_ms": max(1, int(heartbeat_interval * 1000)),
    }
    metrics = default_metrics()
    if presence_writer:
        sync = PresenceSync(
            None,
            name,
            is_presence_writer=True,
            local_view=PresenceView(),
            metrics=metrics,
            **timing,
        )
    else:
        prefix_ = resolve_prefix(prefix, server_name)
        producer = Producer(
            kafka, client_id=f"synkafka-presence-{name}", metrics=metrics
        )
        sync = PresenceSync(
            Publisher(producer, prefix_, metrics=metrics),
            name,
            metrics=metrics,
            **timing,
        )
    for user_id, device_id in pairs:
        sync.sync_started(user_id, device_id)
    try:
        # A stop while the first snapshot waits for an unreachable broker ends the
        # wait at once; close() below then says whether the clear got through.
        if not sync.start(stop=stop):
            return
        _say(
            {
                "instance_id": sync.instance_id,
                "instance_name": name,
                "presence_writer": presence_writer,
                "topic": None
                if presence_writer
                else topics.presence_topic(resolve_prefix(prefix, server_name)),
            }
        )
        while not stop.wait(0.5):
            if sync.failure is not None:
                raise sync.failure
    finally:
        started = time.monotonic()
        delivered = sync.close()
        _say(
            {
                "cleared": sync.instance_id,
                "offset": delivered.offset if delivered is not None else None,
                "close_s": round(time.monotonic() - started, 4),
            }
        )


def _say(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()
