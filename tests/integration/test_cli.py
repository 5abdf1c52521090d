"""The ``synkafka`` commands as a user runs them: real processes, real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert bad_line.stderr.startswith("synkafka: error: line 1:")
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
        "--json",
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
