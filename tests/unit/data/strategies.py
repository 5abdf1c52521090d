"""Hypothesis strategies for every command and stream row.

Two flavours: ``line_commands`` only builds commands Synapse's line format can carry
(no spaces in space-separated fields, no newlines, one row per RDATA), while
``kafka_commands`` builds anything the Avro codec accepts (several rows per RDATA, a
numeric token).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from adapter.core.commands import (
    CancelTaskCommand,
    ClearUserSyncsCommand,
    Command,
    ErrorCommand,
    FederationAckCommand,
    LockReleasedCommand,
    NameCommand,
    NewActiveTaskCommand,
    PingCommand,
    PositionCommand,
    RdataCommand,
    RemoteServerUpCommand,
    ReplicateCommand,
    ServerCommand,
    UserIpCommand,
    UserSyncCommand,
)
from adapter.core.presence_snapshot import PresenceSnapshot, SyncingDevice
from adapter.core.rows import (
    ROW_CLASSES,
    ROW_TYPES_BY_STREAM,
    STREAM_NAMES,
    CachesRow,
    FederationRow,
    ReceiptsRow,
    Row,
    dumps_json,
    row_field_types,
)

LONGS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
# Any text UTF-8 can carry (lone surrogates cannot be encoded).
TEXT = st.text(st.characters(codec="utf-8"), max_size=24)
LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=24)
WORDS = st.text(
    st.characters(codec="utf-8", exclude_characters=" \n"),
    min_size=1,
    max_size=16,
)
DEVICE_IDS = st.none() | WORDS.filter(lambda word: word != "None")

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | LONGS
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)
JSON_OBJECT_TEXT = st.dictionaries(TEXT, JSON_VALUES, max_size=3).map(dumps_json)
JSON_LIST_TEXT = st.lists(JSON_VALUES, max_size=4).map(dumps_json)

_BY_ANNOTATION: dict[str, st.SearchStrategy[Any]] = {
    "str": TEXT,
    "str | None": st.none() | TEXT,
    "int": LONGS,
    "bool": st.booleans(),
    "tuple[str, ...]": st.lists(TEXT, max_size=4).map(tuple),
    "tuple[str, ...] | None": st.none() | st.lists(TEXT, max_size=4).map(tuple),
}
_JSON_FIELDS: dict[tuple[type[Any], str], st.SearchStrategy[Any]] = {
    (ReceiptsRow, "data"): JSON_OBJECT_TEXT,
    (FederationRow, "data"): JSON_OBJECT_TEXT,
    (CachesRow, "keys"): st.none() | JSON_LIST_TEXT,
}


def row_strategy(cls: type[Row]) -> st.SearchStrategy[Row]:
    """Rows of one class, every field drawn by its annotation."""
    kwargs = {
        name: _JSON_FIELDS.get((cls, name), _BY_ANNOTATION.get(annotation, TEXT))
        for name, annotation in row_field_types(cls)
    }
    return st.builds(cls, **kwargs)


ROW_STRATEGIES = {cls: row_strategy(cls) for cls in ROW_CLASSES}
ANY_ROW = st.one_of(*ROW_STRATEGIES.values())


def rows_of(stream: str, min_size: int, max_size: int) -> st.SearchStrategy[list[Row]]:
    """Lists of rows belonging to ``stream``."""
    choices = st.one_of(*(ROW_STRATEGIES[cls] for cls in ROW_TYPES_BY_STREAM[stream]))
    return st.lists(choices, min_size=min_size, max_size=max_size)


def _rdata(token: st.SearchStrategy[int | None], max_rows: int, words: Any) -> Any:
    return st.sampled_from(STREAM_NAMES).flatmap(
        lambda stream: st.builds(
            RdataCommand,
            st.just(stream),
            words,
            token,
            rows_of(stream, 1, max_rows).map(tuple),
        )
    )


def _simple(words: st.SearchStrategy[str], text: st.SearchStrategy[str]) -> Any:
    return st.one_of(
        *(
            st.builds(cls, text)
            for cls in (
                ServerCommand,
                NameCommand,
                PingCommand,
                ErrorCommand,
                RemoteServerUpCommand,
                NewActiveTaskCommand,
                CancelTaskCommand,
            )
        )
    )


def _commands(
    words: st.SearchStrategy[str],
    text: st.SearchStrategy[str],
    rdata: st.SearchStrategy[RdataCommand],
) -> st.SearchStrategy[Command]:
    return st.one_of(
        rdata,
        st.builds(PositionCommand, words, words, LONGS, LONGS),
        st.just(ReplicateCommand()),
        st.builds(UserSyncCommand, words, words, DEVICE_IDS, st.booleans(), LONGS),
        st.builds(ClearUserSyncsCommand, text),
        st.builds(FederationAckCommand, words, LONGS),
        st.builds(UserIpCommand, words, TEXT, TEXT, TEXT, st.none() | TEXT, LONGS),
        st.builds(LockReleasedCommand, TEXT, TEXT, TEXT),
        _simple(words, text),
    )


line_commands: st.SearchStrategy[Command] = _commands(
    WORDS, LINE_TEXT, _rdata(st.none() | LONGS, 1, WORDS)
)
"""Commands that Synapse's line format can carry exactly."""

kafka_commands: st.SearchStrategy[Command] = _commands(
    TEXT, TEXT, _rdata(LONGS, 4, TEXT)
)
"""Commands the Avro codec can carry (any text, several rows per RDATA)."""

presence_snapshots: st.SearchStrategy[PresenceSnapshot] = st.builds(
    PresenceSnapshot,
    TEXT,
    TEXT,
    LONGS,
    st.lists(st.builds(SyncingDevice, TEXT, st.none() | TEXT, LONGS), max_size=4).map(
        tuple
    ),
)
