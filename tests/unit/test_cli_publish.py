import io

import pytest

from adapter.cli.lag import format_table
from adapter.cli.publish import parse_input
from adapter.commands import PositionCommand, RdataCommand, ReplicateCommand
from adapter.errors import ConfigError
from adapter.runtime.lag import LagRow


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
    out = list(parse_input(io.StringIO(text)))
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
    rdata, position = parse_input(io.StringIO(text))
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
        list(parse_input(io.StringIO(text)))


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
