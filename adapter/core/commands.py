"""The replication command model: one frozen dataclass per Synapse command.

This module owns:

* the command classes, with Synapse's wire name as ``NAME`` and Synapse's field names;
* Synapse's text line format for them (:func:`parse_line`, ``Command.to_line()``,
  :func:`to_lines`), as Synapse's ``synapse/replication/tcp/commands.py`` writes and
  reads it (rules ported in our own words);
* :data:`COMMANDS_BY_NAME` and the :data:`Command` union.

It must not do I/O or know about Avro (``adapter.codec.avro_codec`` does that) or about topics.

Line format (Synapse's replication protocol): ``NAME`` + one space + arguments. The space is always
written, even with no arguments (``"REPLICATE "``); a line without a space is a name
with empty arguments. JSON inside a line is Synapse's compact, ASCII-only JSON.

Two places where our model differs from a Synapse line:

* **RDATA rows.** One :class:`RdataCommand` carries *every* row of one token, which is
  how we publish on Kafka: no ``batch`` sentinel there (docs/protocol.md, "batch"
  rows). A parsed Synapse line carries exactly one row, and its token is ``None`` for ``batch``. ``to_line()``
  therefore only works for a one-row RDATA; ``to_lines()`` writes Synapse's batch form
  (every row but the last with ``batch``, the last with the token).
* **Nulls.** Python ``None`` is never written as ``"None"``, except for the device id
  of ``USER_SYNC``, where Synapse's line format demands it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final, Self, TypeAlias

from adapter.core.errors import DecodeError, EncodeError, UnknownCommandError
from adapter.core.frozen import frozen_maker
from adapter.core.rows import (
    JsonValue,
    Row,
    dumps_json,
    loads_json,
    row_from_wire,
    row_to_wire,
)

__all__ = [
    "COMMANDS_BY_NAME",
    "CancelTaskCommand",
    "ClearUserSyncsCommand",
    "Command",
    "ErrorCommand",
    "FederationAckCommand",
    "LockReleasedCommand",
    "NameCommand",
    "NewActiveTaskCommand",
    "PingCommand",
    "PositionCommand",
    "RdataCommand",
    "RemoteServerUpCommand",
    "ReplicateCommand",
    "ServerCommand",
    "SimpleCommand",
    "UserIpCommand",
    "UserSyncCommand",
    "parse_line",
    "to_lines",
]

_INT_RE: Final = re.compile(r"-?[0-9]+")
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


# --- Small line helpers (values in, values out) ------------------------------------


def _word(value: str, field: str) -> str:
    """Check a space-separated field before writing it into a line."""
    if not value or " " in value or "\n" in value:
        raise EncodeError("must be non-empty without spaces or newlines", path=field)
    return value


def _text(value: str, field: str) -> str:
    """Check a trailing free-text field (it may hold spaces, never a newline)."""
    if "\n" in value:
        raise EncodeError("must not contain a newline", path=field)
    return value


def _int_text(value: int, field: str) -> str:
    if type(value) is not int:
        raise EncodeError(f"expected an int, got {type(value).__name__}", path=field)
    return str(value)


def _json_text(value: JsonValue, field: str) -> str:
    try:
        return dumps_json(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise EncodeError(f"not JSON-serialisable: {exc}", path=field) from exc


def _parse_word(value: str, what: str) -> str:
    if not value:
        raise DecodeError(f"empty {what}")
    return value


def _parse_int(value: str, what: str) -> int:
    # Stricter than int(): no "+5", " 5", "5_000" or non-ASCII digits, and the value
    # must fit Avro's long, because every token ends up in one.
    if len(value) < 19 and value.isascii() and value.isdigit():
        return int(value)  # the common token: plain digits, below 10**18
    if not _INT_RE.fullmatch(value):
        raise DecodeError(f"{what} is not an integer: {value[:40]!r}")
    number = int(value)
    if not _LONG_MIN <= number <= _LONG_MAX:
        raise DecodeError(f"{what} does not fit 64 bits: {value[:40]!r}")
    return number


def _split(args: str, count: int, what: str) -> list[str]:
    # Synapse splits at most count-1 times, so the last part keeps its spaces.
    parts = args.split(" ", count - 1)
    if len(parts) != count:
        raise DecodeError(f"{what} needs {count} space-separated fields")
    return parts


def _json_array(text: str, length: int, what: str) -> list[JsonValue]:
    value = loads_json(text)
    if type(value) is not list or len(value) != length:
        raise DecodeError(f"{what} is not a JSON array of {length} values")
    return value


def _json_str(value: JsonValue, what: str) -> str:
    if type(value) is not str:
        raise DecodeError(f"{what} is not a string")
    return value


# --- Simple commands ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimpleCommand:
    """A command whose whole argument string is one opaque ``data`` string.

    Synapse's ``_SimpleCommand``: ``data`` round-trips unchanged, spaces included.
    Avro: a record with one ``data`` string field.
    """

    NAME: ClassVar[str] = ""

    data: str

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string (everything after ``NAME``).

        Args:
            args: the argument string.

        Returns:
            The command.
        """
        return cls(args)

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: ``data`` holds a newline.
        """
        return f"{self.NAME} {_text(self.data, 'data')}"


@dataclass(frozen=True, slots=True)
class ServerCommand(SimpleCommand):
    """``SERVER <server_name>``: legacy TCP greeting from the server. Not used on Redis."""

    NAME: ClassVar[str] = "SERVER"


@dataclass(frozen=True, slots=True)
class NameCommand(SimpleCommand):
    """``NAME <client_name>``: legacy TCP client name. Not used on Redis."""

    NAME: ClassVar[str] = "NAME"


@dataclass(frozen=True, slots=True)
class PingCommand(SimpleCommand):
    """``PING <ms timestamp>``: legacy TCP keepalive; ``data`` is opaque."""

    NAME: ClassVar[str] = "PING"


@dataclass(frozen=True, slots=True)
class ErrorCommand(SimpleCommand):
    """``ERROR <text>``: a human-readable error; the receiver only logs it."""

    NAME: ClassVar[str] = "ERROR"


@dataclass(frozen=True, slots=True)
class RemoteServerUpCommand(SimpleCommand):
    """``REMOTE_SERVER_UP <server_name>``: a remote homeserver is reachable again."""

    NAME: ClassVar[str] = "REMOTE_SERVER_UP"


@dataclass(frozen=True, slots=True)
class NewActiveTaskCommand(SimpleCommand):
    """``NEW_ACTIVE_TASK <task_id>``: a start-now task was scheduled (bare, unquoted id)."""

    NAME: ClassVar[str] = "NEW_ACTIVE_TASK"


@dataclass(frozen=True, slots=True)
class CancelTaskCommand(SimpleCommand):
    """``CANCEL_TASK <task_id>``: cancel a scheduled task."""

    NAME: ClassVar[str] = "CANCEL_TASK"


# --- Structured commands -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RdataCommand:
    """Rows of one stream at one token, from one writer.

    Line: ``RDATA <stream_name> <instance_name> <token|batch> <row_json>``, for example
    ``RDATA typing master 1 ["!room:x",["@bob:x"]]``. A line carries one row.

    Avro (``synkafka.command.Rdata``): ``stream_name``, ``instance_name``, ``token``
    (long) and ``rows``, an array of the union of every row record. On Kafka one
    record carries every row of its token, so ``token`` is never null there.

    Attributes:
        stream_name: the stream (``events``, ``caches``, ...).
        instance_name: the writer that produced the rows (``master``, a worker name).
        token: the stream position, or ``None`` for a Synapse ``batch`` line (the row
            shares its token with the next line).
        rows: the rows, each of the stream's row type.
    """

    NAME: ClassVar[str] = "RDATA"

    stream_name: str
    instance_name: str
    token: int | None
    rows: tuple[Row, ...]

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string (everything after ``RDATA``).

        Raises:
            DecodeError: malformed line or row.
            UnknownStreamDecodeError: the stream name is not known.
        """
        stream_name, instance_name, position, row_json = _split(args, 4, "RDATA")
        _parse_word(stream_name, "stream name")
        _parse_word(instance_name, "instance name")
        number = None if position == "batch" else _parse_int(position, "RDATA token")
        row = row_from_wire(stream_name, loads_json(row_json))
        if cls is RdataCommand:
            # A line per row on the bridge's hot path: skip the frozen __init__.
            made: Self = _make_rdata(stream_name, instance_name, number, (row,))
            return made
        return cls(stream_name, instance_name, number, (row,))

    def to_line(self) -> str:
        """Return the Synapse line of a one-row RDATA.

        Raises:
            EncodeError: the command has not exactly one row (use :meth:`to_lines`),
                or a field cannot be written.
        """
        if len(self.rows) != 1:
            raise EncodeError(
                f"RDATA with {len(self.rows)} rows has no single line; use to_lines()",
                path="rows",
            )
        return self._line(self.rows[0], self.token)

    def to_lines(self) -> list[str]:
        """Return Synapse's batch form: every row but the last as ``batch``.

        Receivers buffer ``batch`` rows and apply them with the next numeric token,
        so the lines below mean the same as this one command.

        Returns:
            One line per row.

        Raises:
            EncodeError: the command has no rows, or a field cannot be written.
        """
        if not self.rows:
            raise EncodeError("RDATA without rows has no line", path="rows")
        last = len(self.rows) - 1
        return [
            self._line(row, self.token if index == last else None)
            for index, row in enumerate(self.rows)
        ]

    def _line(self, row: Row, token: int | None) -> str:
        if self.stream_name != row.STREAM_NAME:
            raise EncodeError(
                f"{type(row).__name__} does not belong to stream {self.stream_name!r}",
                path="rows",
            )
        token_text = "batch" if token is None else _int_text(token, "token")
        return (
            f"RDATA {_word(self.stream_name, 'stream_name')} "
            f"{_word(self.instance_name, 'instance_name')} {token_text} "
            f"{_json_text(row_to_wire(row), 'rows')}"
        )


@dataclass(frozen=True, slots=True)
class PositionCommand:
    """The writer wrote no rows in ``(prev_token, new_token]``.

    Line: ``POSITION <stream_name> <instance_name> <prev_token> <new_token>``, for
    example ``POSITION receipts master 2 3``. Avro: ``synkafka.command.Position``.
    """

    NAME: ClassVar[str] = "POSITION"

    stream_name: str
    instance_name: str
    prev_token: int
    new_token: int

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string (everything after ``POSITION``).

        Raises:
            DecodeError: malformed line.
        """
        stream_name, instance_name, prev_token, new_token = _split(args, 4, "POSITION")
        values = (
            _parse_word(stream_name, "stream name"),
            _parse_word(instance_name, "instance name"),
            _parse_int(prev_token, "prev_token"),
            _parse_int(new_token, "new_token"),
        )
        if cls is PositionCommand:
            made: Self = _make_position(*values)
            return made
        return cls(*values)

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: a field cannot be written.
        """
        return (
            f"POSITION {_word(self.stream_name, 'stream_name')} "
            f"{_word(self.instance_name, 'instance_name')} "
            f"{_int_text(self.prev_token, 'prev_token')} "
            f"{_int_text(self.new_token, 'new_token')}"
        )


@dataclass(frozen=True, slots=True)
class ReplicateCommand:
    """Everyone, announce your positions. No fields.

    Line: ``"REPLICATE "`` (Synapse always writes the trailing space). Like Synapse, the
    parser ignores any arguments. Avro: ``synkafka.command.Replicate`` (no fields).
    """

    NAME: ClassVar[str] = "REPLICATE"

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string; it is ignored."""
        return cls()

    def to_line(self) -> str:
        """Return ``"REPLICATE "``, trailing space included."""
        return "REPLICATE "


@dataclass(frozen=True, slots=True)
class UserSyncCommand:
    """A (user, device) on process ``instance_id`` started or stopped syncing.

    Line: ``USER_SYNC <instance_id> <user_id> <device_id|None> <start|end> <last_sync_ms>``,
    for example ``USER_SYNC tNKGG @bob:test.local BOBDEV start 1795882881365``. A null
    device is written as the text ``None`` (Synapse's format; the one place we do
    that), so a real device called ``None`` cannot be written to a line.

    Avro (``synkafka.command.UserSync``): the same fields, ``device_id`` nullable.
    Synapse may add an optional ``presence_state`` later: add it to the schema
    as ``["null", "string"]`` with default null.
    """

    NAME: ClassVar[str] = "USER_SYNC"

    instance_id: str
    user_id: str
    device_id: str | None
    is_syncing: bool
    last_sync_ms: int

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string (everything after ``USER_SYNC``).

        Raises:
            DecodeError: malformed line, or a state other than ``start``/``end``.
        """
        instance_id, user_id, device_id, state, last_sync_ms = _split(
            args, 5, "USER_SYNC"
        )
        if state not in ("start", "end"):
            raise DecodeError(f"USER_SYNC state must be start or end: {state[:20]!r}")
        return cls(
            _parse_word(instance_id, "instance id"),
            _parse_word(user_id, "user id"),
            None if device_id == "None" else _parse_word(device_id, "device id"),
            state == "start",
            _parse_int(last_sync_ms, "last_sync_ms"),
        )

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: a field cannot be written, or the device id is the text
                ``None``, which the line format cannot tell from null.
        """
        if self.device_id is None:
            device = "None"
        elif self.device_id == "None":
            raise EncodeError(
                "a device called 'None' reads back as null on Synapse's line",
                path="device_id",
            )
        else:
            device = _word(self.device_id, "device_id")
        return (
            f"USER_SYNC {_word(self.instance_id, 'instance_id')} "
            f"{_word(self.user_id, 'user_id')} {device} "
            f"{'start' if self.is_syncing else 'end'} "
            f"{_int_text(self.last_sync_ms, 'last_sync_ms')}"
        )


@dataclass(frozen=True, slots=True)
class ClearUserSyncsCommand:
    """Drop every sync that process ``instance_id`` registered (graceful shutdown).

    The request calls it ``CLEAR_USER_SYNCS``; Synapse's wire name, which we read and
    write, is ``CLEAR_USER_SYNC``. Line: ``CLEAR_USER_SYNC <instance_id>``.
    Avro: ``synkafka.command.ClearUserSync``.
    """

    NAME: ClassVar[str] = "CLEAR_USER_SYNC"

    instance_id: str

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string: all of it is the instance id."""
        return cls(args)

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: the instance id holds a newline.
        """
        return f"CLEAR_USER_SYNC {_text(self.instance_id, 'instance_id')}"


@dataclass(frozen=True, slots=True)
class FederationAckCommand:
    """A federation sender processed the ``federation`` stream up to ``token``.

    Line: ``FEDERATION_ACK <instance_name> <token>``. Avro:
    ``synkafka.command.FederationAck``.
    """

    NAME: ClassVar[str] = "FEDERATION_ACK"

    instance_name: str
    token: int

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string; Synapse requires exactly two fields.

        Raises:
            DecodeError: malformed line.
        """
        parts = args.split(" ")
        if len(parts) != 2:
            raise DecodeError("FEDERATION_ACK needs exactly 2 space-separated fields")
        return cls(
            _parse_word(parts[0], "instance name"), _parse_int(parts[1], "token")
        )

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: a field cannot be written.
        """
        return (
            f"FEDERATION_ACK {_word(self.instance_name, 'instance_name')} "
            f"{_int_text(self.token, 'token')}"
        )


@dataclass(frozen=True, slots=True)
class UserIpCommand:
    """A client was seen: user, access token, IP, user agent, device, time.

    Line: ``USER_IP <user_id> <json [access_token, ip, user_agent, device_id, last_seen]>``,
    on the ``<server_name>/USER_IP`` channel. It carries a live access token: never
    log it. Avro: ``synkafka.command.UserIp``, ``device_id`` nullable.
    """

    NAME: ClassVar[str] = "USER_IP"

    user_id: str
    access_token: str
    ip: str
    user_agent: str
    device_id: str | None
    last_seen: int

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string (everything after ``USER_IP``).

        Raises:
            DecodeError: malformed line or JSON.
        """
        user_id, text = _split(args, 2, "USER_IP")
        access_token, ip, user_agent, device_id, last_seen = _json_array(
            text, 5, "USER_IP data"
        )
        if device_id is not None and type(device_id) is not str:
            raise DecodeError("USER_IP device_id is not a string or null")
        if type(last_seen) is not int or not _LONG_MIN <= last_seen <= _LONG_MAX:
            raise DecodeError("USER_IP last_seen is not a 64-bit integer")
        return cls(
            _parse_word(user_id, "user id"),
            _json_str(access_token, "USER_IP access_token"),
            _json_str(ip, "USER_IP ip"),
            _json_str(user_agent, "USER_IP user_agent"),
            device_id,
            last_seen,
        )

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: a field cannot be written.
        """
        data = [self.access_token, self.ip, self.user_agent, self.device_id]
        return (
            f"USER_IP {_word(self.user_id, 'user_id')} "
            f"{_json_text([*data, int(_int_text(self.last_seen, 'last_seen'))], 'data')}"
        )


@dataclass(frozen=True, slots=True)
class LockReleasedCommand:
    """A worker lock was released; waiters elsewhere may retry.

    Line: ``LOCK_RELEASED <json [instance_name, lock_name, lock_key]>``, for example
    ``LOCK_RELEASED ["master","new_event_during_purge_lock","!room:x"]``.
    Avro: ``synkafka.command.LockReleased``.
    """

    NAME: ClassVar[str] = "LOCK_RELEASED"

    instance_name: str
    lock_name: str
    lock_key: str

    @classmethod
    def from_line(cls, args: str) -> Self:
        """Parse the argument string: one JSON array of three strings.

        Raises:
            DecodeError: malformed JSON.
        """
        instance_name, lock_name, lock_key = _json_array(args, 3, "LOCK_RELEASED")
        return cls(
            _json_str(instance_name, "LOCK_RELEASED instance_name"),
            _json_str(lock_name, "LOCK_RELEASED lock_name"),
            _json_str(lock_key, "LOCK_RELEASED lock_key"),
        )

    def to_line(self) -> str:
        """Return the Synapse line.

        Raises:
            EncodeError: a field cannot be written.
        """
        data = [self.instance_name, self.lock_name, self.lock_key]
        return f"LOCK_RELEASED {_json_text(data, 'data')}"


Command: TypeAlias = (
    RdataCommand
    | PositionCommand
    | ReplicateCommand
    | UserSyncCommand
    | ClearUserSyncsCommand
    | FederationAckCommand
    | UserIpCommand
    | RemoteServerUpCommand
    | LockReleasedCommand
    | NewActiveTaskCommand
    | CancelTaskCommand
    | ServerCommand
    | NameCommand
    | PingCommand
    | ErrorCommand
)
"""Any replication command. ``match`` on it with ``assert_never`` for exhaustiveness."""

COMMAND_CLASSES: Final[tuple[type[Command], ...]] = (
    RdataCommand,
    PositionCommand,
    ReplicateCommand,
    UserSyncCommand,
    ClearUserSyncsCommand,
    FederationAckCommand,
    UserIpCommand,
    RemoteServerUpCommand,
    LockReleasedCommand,
    NewActiveTaskCommand,
    CancelTaskCommand,
    ServerCommand,
    NameCommand,
    PingCommand,
    ErrorCommand,
)
"""The 15 command classes (Synapse's ``_COMMANDS``)."""

# The two commands of nearly every line the bridge reads, built without the frozen
# __init__ (same result: neither validates in __post_init__).
_make_rdata: Final = frozen_maker(RdataCommand)
_make_position: Final = frozen_maker(PositionCommand)

COMMANDS_BY_NAME: Final[Mapping[str, type[Command]]] = MappingProxyType(
    {cls.NAME: cls for cls in COMMAND_CLASSES}
)
"""Synapse wire name to command class."""


def parse_line(line: str) -> Command:
    """Parse one Synapse replication line (one Redis message, no terminator).

    Args:
        line: the decoded text of the line.

    Returns:
        The command. An RDATA line gives an :class:`RdataCommand` with one row and
        ``token=None`` for ``batch``.

    Raises:
        UnknownCommandError: the command name is not known.
        UnknownStreamDecodeError: an RDATA line names an unknown stream.
        DecodeError: anything else is malformed, including a blank line (Synapse's
            transport skips those before parsing; so should callers).
    """
    if not line.strip():
        raise DecodeError("blank line")
    if "\n" in line:
        # Synapse refuses to send a newline inside a command; one cannot be valid.
        raise DecodeError("newline inside a command line")
    name, _, args = line.partition(" ")
    cls = COMMANDS_BY_NAME.get(name)
    if cls is None:
        raise UnknownCommandError(f"unknown command {name[:40]!r}")
    return cls.from_line(args)


def to_lines(command: Command) -> list[str]:
    """Return the Synapse lines for any command (several only for a multi-row RDATA).

    Args:
        command: the command.

    Returns:
        The lines, in the order to publish them.

    Raises:
        EncodeError: a field cannot be written.
    """
    if isinstance(command, RdataCommand):
        return command.to_lines()
    return [command.to_line()]
