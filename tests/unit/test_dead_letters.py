"""What goes to the dead-letter topic, and masking of access tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from adapter.core.dead_letters import (
    DEFAULT_MAX_BYTES,
    HEADER_REFERENCE,
    REFERENCE_HEAD_BYTES,
    dead_letter,
    value_limit,
)
from adapter.core.masking import MaskingFormatter, mask_access_tokens

SOURCE: dict[str, str | int] = {
    "topic": "p.stream.events",
    "partition": 2,
    "offset": 41,
}
HEADERS = (("dlq.reason", b"decode: bad"),)


def test_the_limit_follows_the_producers_message_max_bytes() -> None:
    assert value_limit({}) < DEFAULT_MAX_BYTES
    assert value_limit({}) > DEFAULT_MAX_BYTES - 64 * 1024
    assert value_limit({"message.max.bytes": "5000000"}) > 4_900_000
    assert value_limit({"message.max.bytes": "junk"}) == value_limit({})


def test_a_value_within_the_limit_is_kept_whole() -> None:
    letter = dead_letter(b"x" * 100, HEADERS, source=SOURCE, reason="r", limit=100)
    assert (letter.value, letter.headers, letter.reference) == (
        b"x" * 100,
        HEADERS,
        False,
    )


def test_no_value_stays_no_value() -> None:
    letter = dead_letter(None, HEADERS, source=SOURCE, reason="r", limit=1)
    assert letter.value is None
    assert not letter.reference


@given(st.binary(min_size=101, max_size=5000))
def test_a_larger_value_becomes_a_reference_that_identifies_it(value: bytes) -> None:
    letter = dead_letter(value, HEADERS, source=SOURCE, reason="decode: x", limit=100)
    assert letter.reference
    assert letter.headers == (*HEADERS, (HEADER_REFERENCE, b"1"))
    assert letter.value is not None
    document = json.loads(letter.value)
    assert document["source"] == SOURCE
    assert document["size"] == len(value)
    assert document["sha256"] == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(document["head_base64"]) == value[:REFERENCE_HEAD_BYTES]
    assert document["reason"] == "decode: x"
    assert len(letter.value) < 2 * REFERENCE_HEAD_BYTES + 500


def test_a_reference_can_be_forced_when_the_broker_refused_the_value() -> None:
    letter = dead_letter(
        b"small", HEADERS, source=SOURCE, reason="r", limit=100, force_reference=True
    )
    assert letter.reference
    assert letter.value is not None
    assert json.loads(letter.value)["size"] == 5


def test_tokens_are_masked_in_text_and_in_user_ip_lines() -> None:
    assert (
        mask_access_tokens("refused syt_YWxp_abc_1a2B for x") == "refused syt_*** for x"
    )
    assert mask_access_tokens("nothing to hide") == "nothing to hide"
    assert (
        mask_access_tokens('USER_IP @u:x ["opaque-token","1.2.3.4","ua",null,1]')
        == 'USER_IP @u:x ["***","***","***",null,1]'
    )


def test_the_log_formatter_masks_messages_arguments_and_tracebacks() -> None:
    formatter = MaskingFormatter("%(levelname)s %(message)s")
    exc = RuntimeError("syt_in_the_exception_1")
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "failed: %s", ("syt_arg_2",),
        (RuntimeError, exc, None),
    )  # fmt: skip
    text = formatter.format(record)
    assert text.startswith("WARNING failed: syt_***")
    assert "RuntimeError: syt_***" in text
    assert "syt_in_the" not in text
    assert "syt_arg" not in text


def test_every_command_logs_masked_even_before_it_sets_up_logging() -> None:
    # A fresh interpreter: logging is process-wide state.
    script = (
        "import logging\n"
        "from adapter.cli.common import masked_default_logging, setup_logging\n"
        "masked_default_logging()\n"
        "logging.getLogger('a').warning('one-shot syt_first_secret_1')\n"
        "setup_logging('INFO')\n"
        "logging.getLogger('b').info('long-running syt_second_secret_2')\n"
        "assert len(logging.getLogger().handlers) == 1\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "one-shot syt_***" in done.stderr
    assert "long-running syt_***" in done.stderr
    assert "secret" not in done.stderr
