"""The recorded Synapse lines are well-formed, masked and engine-typed.

Pure file checks (no services), so they guard the test data whenever it is recorded
again with ``python -m tests.e2e.record_lines``.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.capture import CapturedLine, count_kinds, mask_access_token
from tests.e2e.record_lines import DEFAULT_OUT, SERVER_NAME

_WRITTEN = (
    "events",
    "receipts",
    "typing",
    "presence",
    "account_data",
    "to_device",
    "device_lists",
    "push_rules",
)
_COMMANDS = {"RDATA", "POSITION", "REPLICATE", "LOCK_RELEASED", "USER_SYNC", "USER_IP"}


def _load(engine: str) -> list[CapturedLine]:
    text = (DEFAULT_OUT / f"{engine}.txt").read_text(encoding="utf-8")
    lines = []
    for raw in text.split("\n")[:-1]:
        channel, payload = raw.split("\t", 1)
        lines.append(CapturedLine(channel=channel, line=payload, received=0.0))
    return lines


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_recorded_lines_are_masked_and_parse(engine: str) -> None:
    lines = _load(engine)
    assert lines[0].line == "REPLICATE "
    assert {ln.command for ln in lines} == _COMMANDS
    for line in lines:
        expected = (
            f"{SERVER_NAME}/USER_IP" if line.command == "USER_IP" else SERVER_NAME
        )
        assert line.channel == expected
        assert not re.search(r"syt_(?!masked_)", line.line)
        if line.command == "RDATA":
            line.rdata()  # the row is JSON
    user_ip = next(ln for ln in lines if ln.command == "USER_IP")
    masked = json.loads(user_ip.line.split(" ", 2)[2])[0]
    assert masked == mask_access_token("syt_Ym9i_" + "a" * 20 + "_abcdef")
    kinds = count_kinds(lines)
    for stream in _WRITTEN:
        assert kinds[f"RDATA {stream}"] >= 1, stream


def test_recorded_booleans_follow_the_engine() -> None:
    def ev_flags(engine: str) -> set[str]:
        return {
            json.dumps(ln.rdata()[3][1][7:])
            for ln in _load(engine)
            if ln.kind == "RDATA events" and ln.rdata()[3][0] == "ev"
        }

    assert ev_flags("sqlite") == {"[0, 0]"}
    assert ev_flags("postgres") == {"[false, false]"}
    assert "RDATA caches" not in count_kinds(_load("sqlite"))
    assert count_kinds(_load("postgres"))["RDATA caches"] >= 1
