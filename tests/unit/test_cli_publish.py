import io

import pytest

from adapter.cli.lag import format_table
from adapter.cli.publish import decode_lines, line_ranges, parse_numbered, validate
from adapter.core.commands import (
    Command,
    PositionCommand,
    RdataCommand,
    ReplicateCommand,
)
from adapter.core.errors import ConfigError
from adapter.runtime.lag import LagRow


def _commands(text: str) -> list[Command]:
    return [item.command for item in parse_numbered(io.StringIO(text))]


def test_synapse_batch_lines_join_per_writer_and_position_drops_a_pending_batch() -> (
    None
):
    text = "\n".join(
        [
            'RDATA events w1 batch ["state",["!r","t","","$a"]]',
            'RDATA events w2 batch ["state",["!r","t","","$b"]]',
            'RDATA events w1 7 ["state",["!r","u","","$c"]]',
            "POSITION events w2 5 9",
            'RDATA events w2 10 ["state",["!r","v","","$d"]]',
            "REPLICATE ",
            "# a comment and a blank line are skipped",
            "",
        ]
    )
    out = _commands(text)
    assert isinstance(out[0], RdataCommand)
    assert (out[0].instance_name, out[0].token, len(out[0].rows)) == ("w1", 7, 2)
    assert out[1] == PositionCommand("events", "w2", 5, 9)
    assert isinstance(out[2], RdataCommand)
    assert (out[2].instance_name, out[2].token, len(out[2].rows)) == ("w2", 10, 1)
    assert isinstance(out[3], ReplicateCommand)


def test_json_objects_become_commands() -> None:
    text = (
        '{"command":"RDATA","stream":"typing","writer":"m","token":2,"rows":[["!r",[]]]}\n'
        '{"command":"POSITION","stream":"typing","writer":"m","prev":2,"new":3}\n'
    )
    rdata, position = _commands(text)
    assert isinstance(rdata, RdataCommand)
    assert rdata.token == 2
    assert position == PositionCommand("typing", "m", 2, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "line 1: not valid JSON"),
        ('{"command":"USER_IP"}', 'line 1: "command" must be RDATA or POSITION'),
        ('{"command":"RDATA","stream":"typing"}', "line 1: bad RDATA object"),
        ("\n\nNOPE x", "line 3:"),
    ],
)
def test_bad_lines_name_their_line_number(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _commands(text)


def test_lag_table_aligns_columns_and_shows_unknowns_as_dashes() -> None:
    rows = [
        LagRow("g", "events", "p.stream.events", 0, 10, 12, 2, 5, 1.25),
        LagRow("g", "typing", "p.stream.typing", 0, None, 3, 3, None, None),
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "GROUP",
        "STREAM",
        "PART",
        "COMMITTED",
        "HEAD",
        "LAG(MSGS)",
        "LAG(TOKENS)",
        "LAST",
        "RECORD",
        "AGO(S)",
    ]
    assert lines[1].split() == ["g", "events", "0", "10", "12", "2", "5", "1.2"]
    assert lines[2].split() == ["g", "typing", "0", "-", "3", "3", "-", "-"]


_ROW = '["!r","m.read","@u:t","$e",null,{}]'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # A batch run never closed by a token: its rows would be dropped silently.
        (
            f"RDATA receipts m 1 {_ROW}\nRDATA receipts m batch {_ROW}\n",
            "line 2: RDATA receipts m batch: the input ends before a line with the token",
        ),
        (f"RDATA receipts m -1 {_ROW}", "line 1: a stream token cannot be negative"),
        ("\nPOSITION receipts m -2 5", "line 2: a stream token cannot be negative"),
        (
            '{"command":"POSITION","stream":"receipts","writer":"m","prev":0,"new":-1}',
            "line 1: a stream token cannot be negative",
        ),
        # int() would have taken "1" and 1.9; a token is a JSON integer.
        (
            '{"command":"POSITION","stream":"receipts","writer":"m","prev":"1","new":2}',
            'line 1: bad POSITION object: "prev" must be an integer',
        ),
        (
            '{"command":"RDATA","stream":"receipts","writer":"m","token":1.9,"rows":[]}',
            'line 1: bad RDATA object: "token" must be an integer',
        ),
        (
            '{"a":' + "[" * 100_000 + "]" * 100_000 + "}",
            "line 1: JSON nested too deeply",
        ),
        ("RDATA receipts m 1 " + "[" * 100_000, "line 1: invalid JSON"),
    ],
)
def test_input_that_publish_refuses(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(io.StringIO(text))


def test_a_batch_closed_by_its_token_is_one_record_at_the_closing_line() -> None:
    text = f"RDATA receipts m batch {_ROW}\n\nRDATA receipts m 4 {_ROW}\n"
    (item,) = validate(io.StringIO(text))
    assert item.line == 3
    assert isinstance(item.command, RdataCommand)
    assert (item.command.token, len(item.command.rows)) == (4, 2)


def test_non_utf8_input_names_its_line_and_byte() -> None:
    lines = decode_lines([b"POSITION receipts m 1 2\n", b"ok \xff\n"])
    assert next(lines) == "POSITION receipts m 1 2\n"
    with pytest.raises(ConfigError, match=r"^line 2: not UTF-8 text \(byte 4: "):
        next(lines)


def test_line_ranges_group_consecutive_lines() -> None:
    assert line_ranges([7, 1, 2, 3, 9, 10]) == "1-3, 7, 9-10"
    assert line_ranges([]) == "none"
