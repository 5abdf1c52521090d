"""Settings: validation, librdkafka properties, and secrets that never show."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import typer

from adapter.cli import app
from adapter.cli.common import db_dsn, kafka_settings, redis_url
from adapter.cli.config_file import config_default_map
from adapter.core.config import (
    KafkaSettings,
    Secret,
    is_secret_key,
    parse_overrides,
    redact_text,
    redact_url,
    with_url_password,
)
from adapter.core.errors import ConfigError

SECRET = "s3cr3t/with:odd@chars"  # noqa: S105 (a test value)


def test_secret_never_shows_in_repr_str_or_format() -> None:
    secret = Secret(SECRET)
    assert SECRET not in repr(secret) + str(secret) + f"{secret}" + f"{secret!r}"


def test_settings_repr_masks_flag_and_override_secrets() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="scram-sha-512",
        sasl_username="bridge",
        sasl_password=Secret(SECRET),
        overrides=parse_overrides(
            [
                f"ssl.keystore.password={SECRET}",
                "linger.ms=5",
                f"sasl.oauthbearer.client.secret={SECRET}",
            ]
        ),
    )
    assert SECRET not in repr(settings)
    assert "linger.ms" in repr(settings)
    assert settings.sasl_mechanism == "SCRAM-SHA-512"
    assert SECRET not in str(settings.redacted())
    assert settings.to_librdkafka()["sasl.password"] == SECRET
    assert all(s.value == SECRET for s in settings.secrets())
    assert len(settings.secrets()) == 3


def test_settings_in_a_traceback_do_not_leak() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=Secret(SECRET),
    )

    def fail() -> None:
        raise RuntimeError(f"failed with {settings!r}")

    text = ""
    try:
        fail()
    except RuntimeError:
        text = traceback.format_exc()
    assert "failed with" in text
    assert SECRET not in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"security_protocol": "TLS"}, "security protocol must be one of"),
        ({"security_protocol": "SASL_SSL"}, "needs a SASL mechanism"),
        (
            {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
            "needs a SASL username and password",
        ),
        ({"ssl_certificate_location": "/c.pem"}, "go together"),
        ({"ssl_key_location": "/k.pem"}, "go together"),
        ({"ssl_key_password": Secret(SECRET)}, "without --ssl-key"),
        ({"bootstrap_servers": " "}, "must not be empty"),
    ],
)
def test_inconsistent_settings_are_refused(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        KafkaSettings(**kwargs)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)


def test_mutual_tls_settings_become_librdkafka_properties() -> None:
    conf = KafkaSettings(
        security_protocol="ssl",
        ssl_ca_location="/ca.pem",
        ssl_certificate_location="/c.pem",
        ssl_key_location="/k.pem",
        ssl_key_password=Secret(SECRET),
        overrides={"ssl.endpoint.identification.algorithm": "none"},
    ).to_librdkafka()
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SSL",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem",
        "ssl.key.password": SECRET,
        "ssl.endpoint.identification.algorithm": "none",
    }


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("sasl.password", True),
        ("ssl.key.password", True),
        ("ssl.key.pem", True),
        ("ssl.certificate.pem", True),
        ("sasl.oauthbearer.client.secret", True),
        ("sasl.username", False),
        ("ssl.ca.location", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_parse_overrides_rejects_non_properties() -> None:
    assert parse_overrides(["a.b=c=d"]) == {"a.b": "c=d"}
    with pytest.raises(ConfigError, match="-X expects key=value"):
        parse_overrides(["no equals"])


def test_redact_text_hides_every_secret_longest_first() -> None:
    text = f"connect failed for {SECRET} and {SECRET[:6]}"
    assert redact_text(text, [Secret(SECRET), SECRET[:6], None, ""]) == (
        "connect failed for *** and ***"
    )


def test_with_url_password_percent_encodes_and_round_trips() -> None:
    url = with_url_password(
        "rediss://redis.internal:6380/0?ssl_ca_certs=/ca.pem",
        Secret(SECRET),
        username="synapse",
    )
    assert url == (
        "rediss://synapse:s3cr3t%2Fwith%3Aodd%40chars@redis.internal:6380/0"
        "?ssl_ca_certs=/ca.pem"
    )
    assert (
        redact_url(url)
        == "rediss://synapse:***@redis.internal:6380/0?ssl_ca_certs=/ca.pem"
    )
    replaced = with_url_password("postgresql://syn:old@db/synapse", Secret("new"))
    assert replaced == "postgresql://syn:new@db/synapse"
    assert with_url_password("redis://h:1", None) == "redis://h:1"
    with pytest.raises(ConfigError) as info:
        with_url_password("not a url", Secret(SECRET))
    assert SECRET not in str(info.value)


def test_redact_url_masks_secret_query_parameters() -> None:
    assert redact_url("postgresql://u@h/db?sslmode=verify-full&password=x") == (
        "postgresql://u@h/db?sslmode=verify-full&password=***"
    )
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_kafka_settings_read_password_files_and_environment(tmp_path: Path) -> None:
    kafka_file = tmp_path / "kafka"
    kafka_file.write_text(SECRET + "\nignored second line\n")
    key_file = tmp_path / "key"
    key_file.write_text("key-pass\n")
    settings = kafka_settings(
        "b:9093",
        "SASL_SSL",
        "SCRAM-SHA-256",
        "u",
        None,
        kafka_file,
        ssl_cert=tmp_path / "c.pem",
        ssl_key=tmp_path / "k.pem",
        env={"SYNKAFKA_SSL_KEY_PASSWORD_FILE": str(key_file)},
    )
    conf = settings.to_librdkafka()
    assert conf["sasl.password"] == SECRET
    assert conf["ssl.key.password"] == "key-pass"
    # The flag wins over the environment.
    flagged = kafka_settings(
        "b:9093",
        ssl_cert=tmp_path / "c.pem",
        ssl_key=tmp_path / "k.pem",
        ssl_key_password="from-flag",  # noqa: S106
        env={"SYNKAFKA_SSL_KEY_PASSWORD": "from-env"},
    )
    assert flagged.to_librdkafka()["ssl.key.password"] == "from-flag"


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read Kafka password file"):
        kafka_settings("b:1", kafka_password_file=tmp_path / "missing")


def test_redis_url_takes_password_and_user_from_file_or_environment(
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "redis"
    password_file.write_text(SECRET + "\n")
    assert redis_url("redis://h:6379/0", password_file, env={}) == (
        "redis://:s3cr3t%2Fwith%3Aodd%40chars@h:6379/0"
    )
    env = {"SYNKAFKA_REDIS_PASSWORD": "pw", "SYNKAFKA_REDIS_USERNAME": "synapse"}
    assert redis_url("rediss://h:6380", env=env) == "rediss://synapse:pw@h:6380"
    env = {"SYNKAFKA_REDIS_PASSWORD_FILE": str(password_file)}
    assert SECRET.split("/")[0] in redis_url("redis://h", env=env)
    assert redis_url("redis://h:6379", env={}) == "redis://h:6379"


def test_db_dsn_adds_the_password_file_to_postgresql_only(tmp_path: Path) -> None:
    password_file = tmp_path / "db"
    password_file.write_text("pg pass\n")
    dsn = "postgresql://synapse@db:5432/synapse?sslmode=verify-full&sslrootcert=/ca.pem"
    assert db_dsn(dsn, password_file, env={}) == (
        "postgresql://synapse:pg%20pass@db:5432/synapse"
        "?sslmode=verify-full&sslrootcert=/ca.pem"
    )
    env = {"SYNKAFKA_DB_PASSWORD_FILE": str(password_file)}
    assert db_dsn("postgresql://u@h/d", env=env) == "postgresql://u:pg%20pass@h/d"
    assert db_dsn("sqlite:///x.db", env={}) == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="needs a PostgreSQL DSN"):
        db_dsn("sqlite:///x.db", password_file, env={})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a = " + b"[" * 100_000 + b"]" * 100_000, "nests too deeply to read"),
        (b'prefix = "caf\xe9"', "is not UTF-8 text"),
    ],
)
def test_an_absurd_config_file_is_a_config_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "synkafka.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        config_default_map(path, typer.main.get_command(app))


def _default_map(tmp_path: Path, text: str) -> dict[str, Any]:
    path = tmp_path / "synkafka.toml"
    path.write_text(text)
    return config_default_map(path, typer.main.get_command(app))


def test_config_keys_are_the_option_names_of_help(tmp_path: Path) -> None:
    defaults = _default_map(
        tmp_path,
        'bootstrap-servers = "k:9092"\n'
        'X = ["linger.ms=5"]\n'
        "[lag]\njson = true\n"
        '[consume]\nfrom = "earliest"\nmetrics-port = 9100\ndb = "sqlite:///x.db"\n'
        '[topics.ensure]\npartitions = 3\nstream = "events"\n'
        "[presence]\nas_json = true\n",  # the parameter-name spelling still works
    )
    assert defaults["lag"]["as_json"] is True
    assert defaults["consume"] | {"x": None} == {
        "bootstrap_servers": "k:9092",
        "x": None,
        "start_from": "earliest",
        "metrics_port": 9100,
        "db": "sqlite:///x.db",
    }
    assert defaults["topics"]["ensure"]["partitions"] == 3
    assert defaults["topics"]["ensure"]["stream"] == ["events"]  # one reads as a list
    assert defaults["topics"]["describe"]["x"] == ["linger.ms=5"]
    assert defaults["presence"]["list"]["as_json"] is True
    # A top-level key reaches only the commands that have the option.
    assert "bootstrap_servers" not in defaults["schemas"]["check"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[lag]\nas-jsn = true\n", "[lag] unknown key 'as-jsn'"),
        ('[consume]\nstart-frm = "bogus"\n', "[consume] unknown key 'start-frm'"),
        ("jsn = true\n", "top level: unknown key 'jsn' (no command has --jsn)"),
        ("[topics]\nfrom = 1\n", "[topics] unknown key 'from'"),
        ("[lagg]\njson = true\n", "unknown table [lagg]"),
        ("[topics.ensur]\npartitions = 1\n", "unknown table [topics.ensur]"),
        ("[consume.db]\nx = 1\n", "unknown table [consume.db]"),
        ("[lag]\njson = true\nas_json = false\n", "[lag] 'json' and 'as_json'"),
        ('[consume]\nmetrics-port = "abc"\n', "[consume] metrics-port: Input should"),
        ('metrics-port = "abc"\n', "top level: metrics-port: Input should"),
        ('[lag]\njson = "perhaps"\n', "[lag] json: "),
        ("[consume]\ndb = [1, 2]\n", "[consume] db: takes one value, not a list"),
    ],
)
def test_an_unknown_key_or_table_or_a_bad_value_names_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _default_map(tmp_path, text)
    line = str(caught.value)
    assert line.startswith(f"config file {tmp_path / 'synkafka.toml'}: "), line
    assert message in line, line
    # The value came from the file: click's wording would blame the environment.
    assert "env var" not in line
    assert "\n" not in line
