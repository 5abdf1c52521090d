"""The ``synkafka`` commands as a user runs them: real processes, real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.cli.publish import parse_numbered
from adapter.codec.avro_codec import encode
from tests.integration.harness import json_lines, wait_for


def synkafka(
    *args: str,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=cwd,
    )


@pytest.fixture
def common(kafka_bootstrap: str, unique_name: str) -> list[str]:
    return ["--bootstrap-servers", kafka_bootstrap, "--prefix", f"cli.{unique_name}"]


def test_topics_ensure_creates_everything_and_describe_reports_it(
    common: list[str],
) -> None:
    before = synkafka("topics", "describe", "--stream", "events", *common)
    assert before.returncode == 1
    assert "missing" in before.stdout
    created = synkafka(
        "topics", "ensure", "--stream", "events", "--stream", "typing", *common
    )
    assert created.returncode == 0, created.stderr
    assert (
        created.stdout.count("created") == 7
    )  # 2 streams + presence, positions, commands, user_ip, dlq
    again = synkafka(
        "topics", "ensure", "--stream", "events", "--stream", "typing", *common
    )
    assert again.returncode == 0
    assert "created" not in again.stdout
    described = synkafka("topics", "describe", "--stream", "events", "--json", *common)
    assert described.returncode == 0, described.stdout
    report = {r["topic"]: r for r in json.loads(described.stdout)}
    presence = next(r for name, r in report.items() if name.endswith(".presence.syncs"))
    assert presence["config"]["cleanup.policy"] == "compact"
    assert all(r["exists"] and not r["differences"] for r in report.values())


def test_publish_then_tail_then_consume_then_lag(
    common: list[str], tmp_path: Path
) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    lines = "\n".join(
        [
            json.dumps(
                {
                    "command": "RDATA",
                    "stream": "receipts",
                    "writer": "master",
                    "token": token,
                    "rows": [
                        [
                            "!r:test",
                            "m.read",
                            f"@u{token}:test",
                            "$e",
                            None,
                            {"ts": token},
                        ]
                    ],
                }
            )
            for token in (2, 3)
        ]
        # A Synapse line with a batch row: both rows land in ONE record at token 4.
        + [
            'RDATA receipts master batch ["!r:test","m.read","@a:test","$e",null,{}]',
            'RDATA receipts master 4 ["!r:test","m.read","@b:test","$e",null,{}]',
            "POSITION receipts master 4 6",
        ]
    )
    published = synkafka("publish", *common, input_text=lines)
    assert published.returncode == 0, published.stderr
    assert "published 4 records" in published.stderr

    tailed = synkafka("tail", "receipts", "--from-beginning", "--json", *common)
    assert tailed.returncode == 0, tailed.stderr
    records = [json.loads(x) for x in tailed.stdout.splitlines()]
    assert [r["command"] for r in records] == ["RDATA", "RDATA", "RDATA", "POSITION"]
    assert [len(r["rows"]) for r in records[:3]] == [1, 1, 2]
    assert records[3]["new"] == 6

    out = tmp_path / "rows.jsonl"
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter",
            "consume",
            *common,
            "--instance-name",
            "cli",
            "--stream",
            "receipts",
            "--from",
            "earliest",
            "--output",
            str(out),
            "--metrics-port",
            "-1",
            "--no-progress",
            "--commit-interval",
            "0.1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: len(json_lines(out)) == 3,
            30,
            "3 updates",
        )
        lag = synkafka("lag", "--json", "--group", f"{common[3]}.cli", *common)
        wait_for(
            lambda: (
                json.loads(
                    synkafka(
                        "lag", "--json", "--group", f"{common[3]}.cli", *common
                    ).stdout
                )["lag_messages"]
                == 0
            ),
            30,
            "the commit",
        )
    finally:
        consumer.terminate()
        _, err = consumer.communicate(timeout=30)
    assert consumer.returncode == 0, err
    updates = json_lines(out)
    assert [u["token"] for u in updates] == [2, 3, 4]
    assert {u["source"] for u in updates} == {"kafka"}
    assert lag.returncode == 0, lag.stderr
    row = json.loads(
        synkafka("lag", "--json", "--group", f"{common[3]}.cli", *common).stdout
    )
    assert row["committed"] == row["head"] == 4
    table = synkafka("lag", "--group", f"{common[3]}.cli", *common)
    assert table.stdout.splitlines()[0].split()[:3] == ["GROUP", "STREAM", "PART"]


def test_bad_input_is_one_clear_line_and_exit_code_2(
    common: list[str], tmp_path: Path
) -> None:
    unknown = synkafka("consume", "--stream", "nope", *common)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "synkafka: error: unknown stream(s): nope"
    bad_x = synkafka("topics", "describe", "-X", "not a property", *common)
    assert bad_x.returncode == 2
    assert "-X expects key=value" in bad_x.stderr
    bad_line = synkafka("publish", *common, input_text="RDATA events\n")
    assert bad_line.returncode == 2
    assert bad_line.stderr.startswith("synkafka: error: stdin: line 1:")
    usage = synkafka("consume", "--no-such-flag")
    assert usage.returncode == 2
    assert "No such option" in usage.stderr


def test_toml_config_and_environment_supply_defaults(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    prefix = f"cfg.{unique_name}"
    config = tmp_path / "synkafka.toml"
    config.write_text(
        f'bootstrap-servers = "{kafka_bootstrap}"\n'
        f'prefix = "{prefix}"\n'
        "[topics.ensure]\n"
        "partitions = 2\n"
        # `json` as --help spells it (the parameter is `as_json`).
        "[topics.describe]\n"
        "json = true\n"
    )
    ensured = synkafka(
        "--config", str(config), "topics", "ensure", "--stream", "events"
    )
    assert ensured.returncode == 0, ensured.stderr
    # The flag beats the file; the environment beats the file too.
    described = synkafka(
        "topics",
        "describe",
        "--stream",
        "events",
        "--partitions",
        "2",
        env={"SYNKAFKA_CONFIG": str(config), "SYNKAFKA_PREFIX": prefix},
    )
    assert described.returncode == 0, described.stdout + described.stderr
    events = next(
        r for r in json.loads(described.stdout) if r["topic"].endswith(".stream.events")
    )
    assert events["partitions"] == 2


def test_secrets_never_show_in_help_or_errors(
    common: list[str], tmp_path: Path
) -> None:
    secret = "hunter2-very-secret"  # noqa: S105 (a test value)
    password_file = tmp_path / "password"
    password_file.write_text(secret + "\n")
    helped = synkafka("consume", "--help", env={"SYNKAFKA_KAFKA_PASSWORD": secret})
    assert secret not in helped.stdout
    failed = synkafka(
        "topics",
        "describe",
        "--security-protocol",
        "SASL_SSL",
        "--kafka-password-file",
        str(password_file),
        *common,
    )
    assert failed.returncode == 2
    assert secret not in failed.stdout + failed.stderr
    assert "needs a SASL mechanism" in failed.stderr


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("homeserver.db", "--db: not a database DSN: 'homeserver.db'"),
        (
            "host=127.0.0.1 dbname=synapse password=hunter2 stray",
            "--db: not a valid libpq key=value string",
        ),
        (
            "sqlite:///{tmp}/missing.db",
            "SQLite database {tmp}/missing.db does not exist",
        ),
    ],
)
def test_consume_refuses_a_bad_db_in_one_line_and_creates_no_file(
    common: list[str], tmp_path: Path, db: str, message: str
) -> None:
    db = db.format(tmp=tmp_path)
    result = synkafka(
        "consume", "--stream", "receipts", "--metrics-port", "-1", "--no-progress",
        "--db", db, *common, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"synkafka: error: {message.format(tmp=tmp_path)}"), line
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # neither the DSN nor the path became a file


def _receipt_line(token: int, pad: int = 0) -> str:
    row = ["!r:test", "m.read", f"@u{token}:test", "$e", None, {"pad": "x" * pad}]
    return f"RDATA receipts master {token} {json.dumps(row)}"


def _tokens_on_topic(common: list[str]) -> list[int]:
    tailed = synkafka("tail", "receipts", "--from-beginning", "--json", *common)
    assert tailed.returncode == 0, tailed.stderr
    return [json.loads(x)["token"] for x in tailed.stdout.splitlines()]


def test_publish_checks_everything_first_and_says_what_it_did(
    common: list[str], tmp_path: Path
) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    good = [_receipt_line(t) for t in (1, 2, 3, 4)]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join([*good, "RDATA receipts master 5 [1]"]) + "\n")
    refused = synkafka("publish", str(bad), *common)
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"synkafka: error: {bad}: line 5: "), line
    assert line.endswith("; nothing was published"), line
    assert _tokens_on_topic(common) == []  # the four good lines were not sent either

    published = synkafka("publish", *common, input_text="\n".join(good) + "\n")
    assert published.returncode == 0, published.stderr
    checked, done = published.stderr.splitlines()[-2:]
    assert checked == "stdin: 4 records, all valid; publishing"
    assert done.startswith("published 4 records in ")
    assert done.endswith(f": 4 to {common[3]}.stream.receipts")
    assert _tokens_on_topic(common) == [1, 2, 3, 4]


def _pad_for_value_size(token: int, low: int, high: int) -> int:
    """A pad that makes the receipt's encoded value ``low`` to ``high`` bytes long."""
    pad = 0
    while True:
        (item,) = parse_numbered([_receipt_line(token, pad)])
        command = item.command
        size = len(encode(command))
        if size >= low:
            assert size <= high, f"no pad gives {low} to {high} bytes"
            return pad
        pad += max(1, (low - size) // 2)


def test_publish_names_the_lines_the_broker_acknowledged(common: list[str]) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    # Line 4's value fits message.max.bytes, so the up-front check passes it, but with
    # its key and headers the record does not: the client refuses it mid-run.
    lines = [_receipt_line(1), _receipt_line(2), _receipt_line(3)]
    lines += [_receipt_line(4, pad=_pad_for_value_size(4, 990, 1000)), _receipt_line(5)]
    failed = synkafka(
        "publish", "-X", "message.max.bytes=1000", *common,
        input_text="\n".join(lines) + "\n",
    )  # fmt: skip
    assert failed.returncode == 1  # a runtime failure, not a bad input
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("synkafka: error: "), last
    assert "MSG_SIZE_TOO_LARGE" in last
    assert last.endswith(
        "; published lines: 1-3 (3 of 5 records); not published: 4-5"
    ), last
    assert _tokens_on_topic(common) == [1, 2, 3]


def test_publish_refuses_an_oversized_record_before_sending_anything(
    common: list[str],
) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    lines = [_receipt_line(1), _receipt_line(2), _receipt_line(3, pad=3000)]
    refused = synkafka(
        "publish", "-X", "message.max.bytes=1000", *common,
        input_text="\n".join(lines) + "\n",
    )  # fmt: skip
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert line.startswith("synkafka: error: stdin: line 3: its record is "), line
    assert "(producer message.max.bytes 1,000)" in line
    assert line.endswith("; nothing was published"), line
    assert _tokens_on_topic(common) == []


def test_publish_with_a_mistyped_prefix_creates_no_topic(common: list[str]) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    typo = [*common[:3], common[3] + "-typo"]
    refused = synkafka("publish", *typo, input_text=_receipt_line(1) + "\n")
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()
    assert f"topic {typo[3]}.positions does not exist" in line, line
    assert f"the topic prefix in use is '{typo[3]}'" in line, line
    assert line.endswith("; nothing was published"), line
    described = synkafka("topics", "describe", "--stream", "receipts", *typo)
    assert described.returncode == 1  # still missing: publish created nothing
    assert "missing" in described.stdout


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.txt", None, "missing.txt: cannot read: No such file or directory"),
        (".", None, ".: cannot read: Is a directory"),
        ("latin1.txt", b"POSITION receipts m 1 2\n\xe9t\xe9\n", "line 2: not UTF-8"),
        (
            "deep.jsonl",
            b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            "line 1: JSON nested too deeply to read",
        ),
    ],
)
def test_publish_unreadable_input_is_one_line_not_a_traceback(
    common: list[str], tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    result = synkafka("publish", name, *common, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("synkafka: error: "), line
    assert message in line
    assert line.endswith("; nothing was published")


def test_a_handler_that_keeps_failing_stops_consume_with_one_error_line(
    common: list[str], tmp_path: Path
) -> None:
    assert synkafka("topics", "ensure", "--stream", "receipts", *common).returncode == 0
    published = synkafka("publish", *common, input_text=_receipt_line(1) + "\n")
    assert published.returncode == 0, published.stderr
    (tmp_path / "failing_handler.py").write_text(
        "def handle(update):\n"
        "    raise RuntimeError('no room for\\n  ' + str(update.token))\n"
    )
    result = synkafka(
        "consume", "--stream", "receipts", "--from", "earliest",
        "--handler", "failing_handler:handle", "--on-handler-error", "stop",
        "--instance-name", "failing", "--metrics-port", "-1", "--no-progress",
        *common, env={"PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # a runtime failure
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    retries = [x for x in lines if " WARNING " in x and "handler for receipts" in x]
    assert len(retries) == 5  # handler_retries, each one line
    for n, line in enumerate(retries, start=1):
        assert line.endswith(f"failed (attempt {n}/5): RuntimeError: no room for 1")
    assert lines[-1] == (
        "synkafka: error: stream receipts: handler failed 5 times: RuntimeError: "
        "no room for 1; stopping without committing past token 1"
    )
