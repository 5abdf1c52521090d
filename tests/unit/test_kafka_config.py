"""Configuration errors are found before any client connects, and say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.core.config import KafkaSettings, Secret, check_bootstrap_servers
from adapter.core.errors import ConfigError
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.client import check_client_config, where
from adapter.io.kafka.consumer import Consumer
from adapter.io.kafka.producer import Producer


@pytest.mark.parametrize(
    "servers",
    [
        "127.0.0.1:9092",
        "kafka-1.internal:9093, kafka-2.internal:9093",
        "[::1]:9092",
        "::1",
        "SASL_SSL://broker.example.com:9094",
        "localhost",
    ],
)
def test_usable_bootstrap_lists_pass(servers: str) -> None:
    check_bootstrap_servers(servers)
    assert KafkaSettings(bootstrap_servers=servers).bootstrap_servers == servers


@pytest.mark.parametrize(
    ("servers", "entry"),
    [
        ("notahost::::", "notahost::::"),
        ("host:port", "host:port"),
        ("host:0", "host:0"),
        ("host:65536", "host:65536"),
        (":9092", ":9092"),
        ("a b:1", "a b:1"),
        ("http://h:1", "http://h:1"),
        ("h:1,,h:2", ""),
        ("[zz]:1", "[zz]:1"),
        ("h:1:2", "h:1:2"),
    ],
)
def test_unparseable_bootstrap_lists_are_refused_naming_the_entry(
    servers: str, entry: str
) -> None:
    with pytest.raises(ConfigError, match="is not host:port") as info:
        KafkaSettings(bootstrap_servers=servers)
    assert repr(entry) in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"no.such.property": "1"},
            'No such configuration property: "no.such.property"',
        ),
        ({"fetch.max.bytes": "notanumber"}, '"fetch.max.bytes"'),
        ({"session.timeout.ms": "forever"}, '"session.timeout.ms"'),
    ],
)
def test_librdkafka_refusals_are_config_errors(
    overrides: dict[str, str], message: str
) -> None:
    settings = KafkaSettings(overrides=overrides)
    with pytest.raises(ConfigError, match=message):
        check_client_config(settings)
    # Each client refuses the same way, as a ConfigError (never retried).
    with pytest.raises(ConfigError, match=message):
        Consumer(settings, "g")
    with pytest.raises(ConfigError, match=message):
        Admin(settings)
    with pytest.raises(ConfigError, match=message):
        _ = Producer(settings).client


def test_a_good_configuration_passes_without_a_broker() -> None:
    # Nothing listens on port 1: the check must not need a connection.
    check_client_config(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", overrides={"linger.ms": "7"})
    )


def test_secrets_in_refused_values_are_masked() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=Secret("hunter2-secret"),
        overrides={"ssl.key.password": "pem-secret", "sasl.oops": "1"},
    )
    with pytest.raises(ConfigError) as info:
        check_client_config(settings)
    assert "sasl.oops" in str(info.value)
    assert "hunter2-secret" not in str(info.value)
    assert "pem-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "flag"),
    [
        ("ssl_ca_location", "--ssl-ca"),
        ("ssl_certificate_location", "--ssl-cert"),
        ("ssl_key_location", "--ssl-key"),
    ],
)
def test_an_unreadable_tls_file_is_named_with_its_flag(
    tmp_path: Path, field: str, flag: str
) -> None:
    missing = str(tmp_path / "nowhere.pem")
    present = tmp_path / "present.pem"
    present.write_text("not a certificate, but readable")
    files = {"ssl_certificate_location": str(present), "ssl_key_location": str(present)}
    files[field] = missing
    settings = KafkaSettings(
        security_protocol="SSL",
        ssl_ca_location=files.get("ssl_ca_location"),
        ssl_certificate_location=files["ssl_certificate_location"],
        ssl_key_location=files["ssl_key_location"],
    )
    with pytest.raises(ConfigError) as caught:
        check_client_config(settings)
    message = str(caught.value)
    assert missing in message
    assert flag in message
    assert "No such file or directory" in message


def test_a_ca_directory_is_left_to_librdkafka(tmp_path: Path) -> None:
    # librdkafka accepts a directory of hashed CA files for ssl.ca.location.
    check_client_config(
        KafkaSettings(security_protocol="SSL", ssl_ca_location=str(tmp_path))
    )


def test_messages_name_the_servers_a_bootstrap_override_sets() -> None:
    settings = KafkaSettings(
        bootstrap_servers="flag-host:9092",
        overrides={
            "bootstrap.servers": "override-host:9093",
            "security.protocol": "ssl",
        },
    )
    assert where(settings) == "override-host:9093 (SSL)"
    assert where(KafkaSettings(bootstrap_servers="flag-host:9092")) == (
        "flag-host:9092 (PLAINTEXT)"
    )
