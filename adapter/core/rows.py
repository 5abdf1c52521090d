"""Typed stream rows: one immutable named tuple per row shape of every Synapse stream.

This module owns:

* the row classes (field names and order exactly as Synapse's ``ROW_TYPE`` attrs
  classes, so ``row_to_wire`` yields the JSON array Synapse puts in an RDATA line);
* the stream registry of *names*: :data:`STREAM_NAMES` and :func:`row_types`;
* the conversion between a row and Synapse's JSON row array
  (:func:`row_from_wire`, :func:`row_to_wire`), including Synapse's JSON conventions
  (compact separators, ``ensure_ascii``, no NaN/Infinity) and its two boolean spellings
  (``0``/``1`` from SQLite, ``false``/``true`` from PostgreSQL).

It must not do I/O, know about Avro, or know about commands. Streams' backfill
queries live in :mod:`adapter.io.db.sources` and stream positions in
:mod:`adapter.core.positions`.

Free-form JSON (receipt ``data``, federation ``data``, cache ``keys``) is kept as its
compact JSON *text*, exactly as Synapse serialises it and as Avro carries it. That
keeps rows hashable, makes the Avro codec a straight copy (no JSON work per record on
the hot path) and keeps key order and number spelling lossless. Call the
``parsed_*`` methods when you need the value.

Synapse ports: ``synapse/replication/tcp/streams/_base.py``, ``events.py``,
``federation.py`` and ``partial_state.py`` (rules rewritten, not copied). The
``profile_updates`` row follows Synapse 1.163.2 (``ProfileUpdatesStreamRow``:
``user_id``, ``action``, ``affected_fields``), which older Synapse versions did not send.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias

from adapter.core.errors import (
    DecodeError,
    EncodeError,
    UnknownStreamDecodeError,
    UnknownStreamError,
)

__all__ = [
    "ROW_CLASSES",
    "ROW_TYPES_BY_STREAM",
    "STREAM_NAMES",
    "AccountDataRow",
    "BackfillRow",
    "CachesRow",
    "DeviceListsRow",
    "EventsAllStateRow",
    "EventsCurrentStateRow",
    "EventsEventRow",
    "FederationRow",
    "JsonValue",
    "PresenceFederationRow",
    "PresenceRow",
    "ProfileUpdatesRow",
    "PushRulesRow",
    "PushersRow",
    "QuarantinedMediaRow",
    "ReceiptsRow",
    "Row",
    "StickyEventsRow",
    "ThreadSubscriptionsRow",
    "ToDeviceRow",
    "TypingRow",
    "UnPartialStatedEventRow",
    "UnPartialStatedRoomRow",
    "dumps_json",
    "loads_json",
    "row_field_types",
    "row_from_wire",
    "row_to_wire",
    "row_types",
]

JsonValue: TypeAlias = Any
"""A value ``json.loads`` can return. ``Any`` because JSON is recursive."""

# Synapse's ``json_encoder``: compact, ASCII only, NaN/Infinity refused.
_ENCODER: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=True, allow_nan=False
)


def _refuse_constant(name: str) -> None:
    # json calls this for NaN, Infinity and -Infinity; Synapse's decoder refuses them.
    raise ValueError(f"JSON constant {name} is not allowed")


_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)

_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1


def dumps_json(value: JsonValue) -> str:
    """Serialise ``value`` the way Synapse does on the replication wire.

    Args:
        value: any JSON-compatible value.

    Returns:
        Compact JSON text (``,`` and ``:`` separators), non-ASCII escaped.

    Raises:
        ValueError: the value is not JSON (NaN, a set, ...). Callers translate it.
        TypeError: the value is not JSON. Callers translate it.
    """
    return _ENCODER.encode(value)


def loads_json(text: str) -> JsonValue:
    """Parse JSON text the way Synapse does: NaN and Infinity are refused.

    Args:
        text: the JSON text.

    Returns:
        The parsed value.

    Raises:
        DecodeError: the text is not JSON, or nests too deeply to parse.
    """
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON: {exc}") from exc


# --- The row classes ---------------------------------------------------------------
# Field order is the wire order. Every class names its stream in STREAM_NAME.
#
# Rows are named tuples, not dataclasses: a backfill builds millions of them and the
# codec one per RDATA row, and a tuple is built in one C call from the database's
# result tuple or the decoded values (a frozen dataclass costs one attribute store
# per field). The fields live on a private NamedTuple base so the public class can
# carry STREAM_NAME and TYPE_ID as class variables. Two rows compare equal when their
# values are equal, even across classes (tuple equality): compare ``type(row)`` too
# where that matters.


class _EventsEventFields(NamedTuple):
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    redacts: str | None
    relates_to: str | None
    membership: str | None
    rejected: bool
    outlier: bool


class EventsEventRow(_EventsEventFields):
    """``events`` row of type ``ev``: a new event was persisted (or an outlier was un-outliered).

    Wire: ``["ev",[event_id,room_id,type,state_key,redacts,relates_to,membership,rejected,outlier]]``.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "events"
    TYPE_ID: ClassVar[str] = "ev"


class _EventsCurrentStateFields(NamedTuple):
    room_id: str
    type: str
    state_key: str
    event_id: str | None


class EventsCurrentStateRow(_EventsCurrentStateFields):
    """``events`` row of type ``state``: one current-state entry changed.

    ``event_id`` is ``None`` when the state key was removed.
    Wire: ``["state",[room_id,type,state_key,event_id]]``.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "events"
    TYPE_ID: ClassVar[str] = "state"


class _EventsAllStateFields(NamedTuple):
    room_id: str


class EventsAllStateRow(_EventsAllStateFields):
    """``events`` row of type ``state-all``: any current state of the room may have changed.

    Synapse sends it instead of many ``state`` rows for one room in one fetch.
    Wire: ``["state-all",[room_id]]``.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "events"
    TYPE_ID: ClassVar[str] = "state-all"


class _BackfillFields(NamedTuple):
    event_id: str
    room_id: str
    type: str
    state_key: str | None
    redacts: str | None
    relates_to: str | None


class BackfillRow(_BackfillFields):
    """``backfill``: an event fetched from history. Wire tokens are positive."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "backfill"


class _PresenceFields(NamedTuple):
    user_id: str
    state: str
    last_active_ts: int
    last_federation_update_ts: int
    last_user_sync_ts: int
    status_msg: str | None
    currently_active: bool


class PresenceRow(_PresenceFields):
    """``presence``: a user's presence state. Timestamps are ms since the epoch.

    ``status_msg`` is declared ``str`` by Synapse but is null in practice.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "presence"


class _PresenceFederationFields(NamedTuple):
    destination: str
    user_id: str


class PresenceFederationRow(_PresenceFederationFields):
    """``presence_federation``: send ``user_id``'s presence to ``destination``."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "presence_federation"


class _TypingFields(NamedTuple):
    room_id: str
    user_ids: tuple[str, ...]


class TypingRow(_TypingFields):
    """``typing``: the *full* list of users typing in a room; it replaces the previous one."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "typing"


class _ReceiptsFields(NamedTuple):
    room_id: str
    receipt_type: str
    user_id: str
    event_id: str
    thread_id: str | None
    data: str


class ReceiptsRow(_ReceiptsFields):
    """``receipts``: a read receipt. ``data`` is the compact JSON text of an object."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "receipts"

    def parsed_data(self) -> dict[str, JsonValue]:
        """Return ``data`` parsed (for example ``{"ts": 1795882765994}``).

        Raises:
            DecodeError: ``data`` is not a JSON object.
        """
        value = loads_json(self.data)
        if not isinstance(value, dict):
            raise DecodeError("receipts row data is not a JSON object")
        return value


class _PushRulesFields(NamedTuple):
    user_id: str


class PushRulesRow(_PushRulesFields):
    """``push_rules``: this user's push rules changed."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "push_rules"


class _PushersFields(NamedTuple):
    user_id: str
    app_id: str
    pushkey: str
    deleted: bool


class PushersRow(_PushersFields):
    """``pushers``: a pusher was added or changed (``deleted`` false) or removed."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "pushers"


class _CachesFields(NamedTuple):
    cache_func: str
    keys: str | None
    invalidation_ts: int


class CachesRow(_CachesFields):
    """``caches``: invalidate ``cache_func`` at ``keys``.

    ``keys`` is the compact JSON text of the key list (scalars or lists), or ``None``
    to invalidate the whole cache. Special ``cache_func`` values such as
    ``cs_cache_fake`` expand to several caches on the receiver.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "caches"

    def parsed_keys(self) -> list[JsonValue] | None:
        """Return ``keys`` parsed, or ``None`` for "the whole cache".

        Raises:
            DecodeError: ``keys`` is not a JSON array.
        """
        if self.keys is None:
            return None
        value = loads_json(self.keys)
        if not isinstance(value, list):
            raise DecodeError("caches row keys is not a JSON array")
        return value


class _DeviceListsFields(NamedTuple):
    user_id: str
    is_signature: bool
    hosts_calculated: bool


class DeviceListsRow(_DeviceListsFields):
    """``device_lists``: a user's device list (or cross-signature) changed."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "device_lists"


class _ToDeviceFields(NamedTuple):
    entity: str


class ToDeviceRow(_ToDeviceFields):
    """``to_device``: ``entity`` (a local ``@user`` or a remote server) has messages."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "to_device"


class _FederationFields(NamedTuple):
    type: str
    data: str


class FederationRow(_FederationFields):
    """``federation``: a queued federation send (``pd``, ``k`` or ``e``).

    ``data`` is the compact JSON text of the row's object.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "federation"

    def parsed_data(self) -> dict[str, JsonValue]:
        """Return ``data`` parsed.

        Raises:
            DecodeError: ``data`` is not a JSON object.
        """
        value = loads_json(self.data)
        if not isinstance(value, dict):
            raise DecodeError("federation row data is not a JSON object")
        return value


class _AccountDataFields(NamedTuple):
    user_id: str
    room_id: str | None
    data_type: str


class AccountDataRow(_AccountDataFields):
    """``account_data``: ``room_id`` is ``None`` for global account data; tags are ``m.tag``."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "account_data"


class _ProfileUpdatesFields(NamedTuple):
    user_id: str
    action: str
    affected_fields: tuple[str, ...] | None


class ProfileUpdatesRow(_ProfileUpdatesFields):
    """``profile_updates`` (Synapse 1.163): a profile changed or a user joined/left a room.

    ``action`` is ``update``, ``joined_room`` or ``left_room``. ``affected_fields``
    names the profile fields changed, or is ``None`` when ``action`` is not ``update``.
    Synapse turns the list into a set; we keep the wire order.
    """

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "profile_updates"


class _StickyEventsFields(NamedTuple):
    room_id: str
    event_id: str


class StickyEventsRow(_StickyEventsFields):
    """``sticky_events`` (MSC4354): a sticky event in a room."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "sticky_events"


class _ThreadSubscriptionsFields(NamedTuple):
    user_id: str
    room_id: str
    event_id: str


class ThreadSubscriptionsRow(_ThreadSubscriptionsFields):
    """``thread_subscriptions`` (MSC4306): ``event_id`` is the thread root."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "thread_subscriptions"


class _UnPartialStatedRoomFields(NamedTuple):
    room_id: str


class UnPartialStatedRoomRow(_UnPartialStatedRoomFields):
    """``un_partial_stated_room``: the room finished its faster-join state resync."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "un_partial_stated_room"


class _UnPartialStatedEventFields(NamedTuple):
    event_id: str
    rejection_status_changed: bool


class UnPartialStatedEventRow(_UnPartialStatedEventFields):
    """``un_partial_stated_event``: the event got its full state."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "un_partial_stated_event"


class _QuarantinedMediaFields(NamedTuple):
    origin: str | None
    media_id: str
    quarantined: bool


class QuarantinedMediaRow(_QuarantinedMediaFields):
    """``quarantined_media``: ``origin`` is ``None`` for local media (NULL in the DB)."""

    __slots__ = ()
    STREAM_NAME: ClassVar[str] = "quarantined_media"


Row: TypeAlias = (
    EventsEventRow
    | EventsCurrentStateRow
    | EventsAllStateRow
    | BackfillRow
    | PresenceRow
    | PresenceFederationRow
    | TypingRow
    | ReceiptsRow
    | PushRulesRow
    | PushersRow
    | CachesRow
    | DeviceListsRow
    | ToDeviceRow
    | FederationRow
    | AccountDataRow
    | ProfileUpdatesRow
    | StickyEventsRow
    | ThreadSubscriptionsRow
    | UnPartialStatedRoomRow
    | UnPartialStatedEventRow
    | QuarantinedMediaRow
)
"""Any stream row."""

ROW_CLASSES: Final[tuple[type[Row], ...]] = (
    EventsEventRow,
    EventsCurrentStateRow,
    EventsAllStateRow,
    BackfillRow,
    PresenceRow,
    PresenceFederationRow,
    TypingRow,
    ReceiptsRow,
    PushRulesRow,
    PushersRow,
    CachesRow,
    DeviceListsRow,
    ToDeviceRow,
    FederationRow,
    AccountDataRow,
    ProfileUpdatesRow,
    StickyEventsRow,
    ThreadSubscriptionsRow,
    UnPartialStatedRoomRow,
    UnPartialStatedEventRow,
    QuarantinedMediaRow,
)
"""Every row class, in a fixed order (the order of the Avro union in RDATA)."""

STREAM_NAMES: Final[tuple[str, ...]] = (
    "events",
    "backfill",
    "presence",
    "presence_federation",
    "typing",
    "receipts",
    "push_rules",
    "pushers",
    "caches",
    "device_lists",
    "to_device",
    "federation",
    "account_data",
    "profile_updates",
    "sticky_events",
    "thread_subscriptions",
    "un_partial_stated_room",
    "un_partial_stated_event",
    "quarantined_media",
)
"""The 19 stream names of Synapse 1.163, in Synapse's registry order."""

ROW_TYPES_BY_STREAM: Final[Mapping[str, tuple[type[Row], ...]]] = MappingProxyType(
    {
        name: tuple(cls for cls in ROW_CLASSES if name == cls.STREAM_NAME)
        for name in STREAM_NAMES
    }
)
"""Stream name to its row classes (three for ``events``, one for every other stream)."""


def row_types(stream_name: str) -> tuple[type[Row], ...]:
    """Return the row classes of a stream.

    Args:
        stream_name: Synapse's wire name of the stream.

    Returns:
        The row classes; ``events`` has three, every other stream one.

    Raises:
        UnknownStreamError: no such stream.
    """
    try:
        return ROW_TYPES_BY_STREAM[stream_name]
    except KeyError:
        raise UnknownStreamError(f"unknown stream {stream_name!r}") from None


def row_field_types(cls: type[Any]) -> tuple[tuple[str, str], ...]:
    """Return ``(field name, annotation text)`` of a row class, in wire order.

    Annotations are text (``"str | None"``) because this module uses postponed
    evaluation; the codec and the wire tables key on that text.
    """
    annotations: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    # NamedTuple wraps text annotations in ForwardRef; unwrap to the text.
    return tuple(
        (name, str(getattr(annotations[name], "__forward_arg__", annotations[name])))
        for name in cls._fields
    )


# --- Wire conversion ---------------------------------------------------------------
# Each field has a "kind" that says how its JSON value maps to the Python value. The
# per-class tables are built once at import; no reflection happens per row.

_FieldReader: TypeAlias = Callable[[JsonValue, str], Any]
_FieldWriter: TypeAlias = Callable[[Any, str], JsonValue]


def _bad(where: str, expected: str, value: JsonValue) -> DecodeError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return DecodeError(f"{where}: expected {expected}, got {shown}")


def _read_str(value: JsonValue, where: str) -> str:
    if type(value) is not str:
        raise _bad(where, "a string", value)
    return value


def _read_opt_str(value: JsonValue, where: str) -> str | None:
    if value is not None and type(value) is not str:
        raise _bad(where, "a string or null", value)
    return value


def _read_int(value: JsonValue, where: str) -> int:
    # bool is an int subclass in Python; a JSON true is not a timestamp.
    if type(value) is not int or not _LONG_MIN <= value <= _LONG_MAX:
        raise _bad(where, "a 64-bit integer", value)
    return value


def _read_bool(value: JsonValue, where: str) -> bool:
    # PostgreSQL rows carry true/false, SQLite rows 0/1 (a difference seen against a real Synapse).
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return value == 1
    raise _bad(where, "a boolean (true/false or 0/1)", value)


def _read_str_list(value: JsonValue, where: str) -> tuple[str, ...]:
    if type(value) is not list or any(type(item) is not str for item in value):
        raise _bad(where, "a list of strings", value)
    return tuple(value)


def _read_opt_str_list(value: JsonValue, where: str) -> tuple[str, ...] | None:
    return None if value is None else _read_str_list(value, where)


def _dump(value: JsonValue, where: str) -> str:
    try:
        return dumps_json(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise DecodeError(f"{where}: cannot re-serialise JSON: {exc}") from exc


def _read_json_object(value: JsonValue, where: str) -> str:
    if type(value) is not dict:
        raise _bad(where, "a JSON object", value)
    return _dump(value, where)


def _read_opt_json_list(value: JsonValue, where: str) -> str | None:
    if value is None:
        return None
    if type(value) is not list:
        raise _bad(where, "a JSON array or null", value)
    return _dump(value, where)


def _write_plain(value: Any, where: str) -> JsonValue:
    return value


def _write_list(value: Any, where: str) -> JsonValue:
    return None if value is None else list(value)


def _write_json_text(value: Any, where: str) -> JsonValue:
    if value is None:
        return None
    try:
        return _DECODER.decode(value)
    except (ValueError, TypeError, RecursionError) as exc:
        raise EncodeError(f"not valid JSON text: {exc}", path=where) from exc


# Kinds per (class, field) where it is not a plain string.
_KIND_BY_ANNOTATION: Final[Mapping[str, tuple[_FieldReader, _FieldWriter]]] = {
    "str": (_read_str, _write_plain),
    "str | None": (_read_opt_str, _write_plain),
    "int": (_read_int, _write_plain),
    "bool": (_read_bool, _write_plain),
    "tuple[str, ...]": (_read_str_list, _write_list),
    "tuple[str, ...] | None": (_read_opt_str_list, _write_list),
}
# JSON-text fields are plain ``str`` to the type checker, so they are named here.
_JSON_FIELDS: Final[
    Mapping[tuple[type[Row], str], tuple[_FieldReader, _FieldWriter]]
] = {
    (ReceiptsRow, "data"): (_read_json_object, _write_json_text),
    (FederationRow, "data"): (_read_json_object, _write_json_text),
    (CachesRow, "keys"): (_read_opt_json_list, _write_json_text),
}


@dataclass(frozen=True, slots=True)
class _WireSpec:
    cls: type[Row]
    names: tuple[str, ...]
    readers: tuple[_FieldReader, ...]
    writers: tuple[_FieldWriter, ...]
    where: str  # prefix for error messages, e.g. "events/ev row"


def _spec_for(cls: type[Row]) -> _WireSpec:
    names: list[str] = []
    readers: list[_FieldReader] = []
    writers: list[_FieldWriter] = []
    for name, annotation in row_field_types(cls):
        reader, writer = _JSON_FIELDS.get((cls, name), _KIND_BY_ANNOTATION[annotation])
        names.append(name)
        readers.append(reader)
        writers.append(writer)
    type_id = getattr(cls, "TYPE_ID", None)
    where = f"{cls.STREAM_NAME}/{type_id} row" if type_id else f"{cls.STREAM_NAME} row"
    return _WireSpec(cls, tuple(names), tuple(readers), tuple(writers), where)


_SPECS: Final[Mapping[type[Row], _WireSpec]] = {
    cls: _spec_for(cls) for cls in ROW_CLASSES
}
_EVENTS_SPECS: Final[Mapping[str, _WireSpec]] = {
    cls.TYPE_ID: _SPECS[cls]
    for cls in (EventsEventRow, EventsCurrentStateRow, EventsAllStateRow)
}
_SPEC_BY_STREAM: Final[Mapping[str, _WireSpec]] = {
    cls.STREAM_NAME: _SPECS[cls] for cls in ROW_CLASSES if cls.STREAM_NAME != "events"
}


def _read_fields(spec: _WireSpec, value: JsonValue) -> Row:
    # Synapse builds rows with ROW_TYPE(*row): the array length must match exactly.
    if type(value) is not list or len(value) != len(spec.names):
        raise _bad(spec.where, f"a JSON array of {len(spec.names)} fields", value)
    args = [
        reader(item, f"{spec.where} field {name}")
        for reader, item, name in zip(spec.readers, value, spec.names, strict=True)
    ]
    return spec.cls(*args)


def row_from_wire(stream_name: str, value: JsonValue) -> Row:
    """Build a typed row from Synapse's JSON row (the last field of an RDATA line).

    ``events`` rows are ``[type_id, fields]``; every other stream's row is the array
    of its fields. Booleans may be ``true``/``false`` or ``0``/``1``.

    Args:
        stream_name: the stream the row belongs to.
        value: the parsed JSON value.

    Returns:
        The row.

    Raises:
        UnknownStreamDecodeError: ``stream_name`` is not a known stream.
        DecodeError: the value does not have the stream's row shape.
    """
    if stream_name == "events":
        # EventsStreamRow(type, data): the type id picks the row class.
        if type(value) is not list or len(value) != 2:
            raise _bad("events row", "[type_id, fields]", value)
        type_id, data = value
        spec = _EVENTS_SPECS.get(type_id) if type(type_id) is str else None
        if spec is None:
            raise _bad("events row", "type id ev, state or state-all", type_id)
        return _read_fields(spec, data)
    spec = _SPEC_BY_STREAM.get(stream_name)
    if spec is None:
        raise UnknownStreamDecodeError(f"unknown stream {stream_name!r}")
    return _read_fields(spec, value)


def row_to_wire(row: Row) -> list[JsonValue]:
    """Return Synapse's JSON row array for ``row`` (booleans as ``true``/``false``).

    Args:
        row: any row.

    Returns:
        The JSON-compatible list that goes after the token in an RDATA line.

    Raises:
        EncodeError: ``row`` is not a row, or a JSON-text field is not valid JSON.
    """
    spec = _SPECS.get(type(row))
    if spec is None:
        raise EncodeError(f"not a stream row: {type(row).__name__}")
    values = [
        writer(getattr(row, name), name)
        for writer, name in zip(spec.writers, spec.names, strict=True)
    ]
    type_id: str | None = getattr(row, "TYPE_ID", None)
    if type_id is not None:
        return [type_id, values]
    return values
