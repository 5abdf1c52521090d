"""Options every command shares, and how they become settings.

Every option has a ``SYNKAFKA_*`` environment variable and can come from the TOML file
given with ``synkafka --config FILE`` (top-level keys apply to every command, a
``[consume]`` or ``[topics.ensure]`` table to one command). Precedence: flag, then
environment, then file, then default. Secrets can be given in a file
(``--kafka-password-file``) or the environment; never as a default shown in ``--help``.
"""

from __future__ import annotations

import logging
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from adapter.config import KafkaSettings, Secret, parse_overrides
from adapter.errors import ConfigError
from adapter.topics import default_prefix

__all__ = [
    "BootstrapOpt",
    "InstanceOpt",
    "KafkaPasswordFileOpt",
    "KafkaPasswordOpt",
    "KafkaUserOpt",
    "LogLevelOpt",
    "OverridesOpt",
    "PrefixOpt",
    "SaslMechanismOpt",
    "SecurityProtocolOpt",
    "ServerNameOpt",
    "SslCaOpt",
    "SslCertOpt",
    "SslKeyOpt",
    "config_default_map",
    "kafka_settings",
    "read_secret",
    "resolve_prefix",
    "setup_logging",
]

_KAFKA = "Kafka connection"
_TOPICS = "Topics"

BootstrapOpt = Annotated[
    str,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        envvar="SYNKAFKA_BOOTSTRAP_SERVERS",
        help="Kafka bootstrap servers, host:port[,host:port...].",
        rich_help_panel=_KAFKA,
    ),
]
SecurityProtocolOpt = Annotated[
    str,
    typer.Option(
        "--security-protocol",
        envvar="SYNKAFKA_SECURITY_PROTOCOL",
        help="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.",
        rich_help_panel=_KAFKA,
    ),
]
SaslMechanismOpt = Annotated[
    str | None,
    typer.Option(
        "--sasl-mechanism",
        envvar="SYNKAFKA_SASL_MECHANISM",
        help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
        rich_help_panel=_KAFKA,
    ),
]
KafkaUserOpt = Annotated[
    str | None,
    typer.Option(
        "--kafka-username",
        envvar="SYNKAFKA_KAFKA_USERNAME",
        help="SASL user name.",
        rich_help_panel=_KAFKA,
    ),
]
KafkaPasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--kafka-password",
        envvar="SYNKAFKA_KAFKA_PASSWORD",
        help="SASL password (prefer --kafka-password-file or the environment).",
        show_default=False,
        rich_help_panel=_KAFKA,
    ),
]
KafkaPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--kafka-password-file",
        envvar="SYNKAFKA_KAFKA_PASSWORD_FILE",
        help="File holding the SASL password (first line).",
        rich_help_panel=_KAFKA,
    ),
]
SslCaOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssl-ca",
        envvar="SYNKAFKA_SSL_CA",
        help="CA bundle (PEM) to verify the brokers.",
        rich_help_panel=_KAFKA,
    ),
]
SslCertOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssl-cert",
        envvar="SYNKAFKA_SSL_CERT",
        help="Client certificate (PEM) for mutual TLS.",
        rich_help_panel=_KAFKA,
    ),
]
SslKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssl-key",
        envvar="SYNKAFKA_SSL_KEY",
        help="Client private key (PEM) for mutual TLS.",
        rich_help_panel=_KAFKA,
    ),
]
OverridesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-X",
        help="librdkafka property key=value, applied last (repeatable), as kcat does.",
        rich_help_panel=_KAFKA,
    ),
]
ServerNameOpt = Annotated[
    str,
    typer.Option(
        "--server-name",
        envvar="SYNKAFKA_SERVER_NAME",
        help="The homeserver's server_name; the default topic prefix is synapse.<server_name>.",
        rich_help_panel=_TOPICS,
    ),
]
PrefixOpt = Annotated[
    str | None,
    typer.Option(
        "--prefix",
        envvar="SYNKAFKA_PREFIX",
        help="Topic prefix (default: synapse.<server_name>).",
        rich_help_panel=_TOPICS,
    ),
]
InstanceOpt = Annotated[
    str,
    typer.Option(
        "--instance-name",
        envvar="SYNKAFKA_INSTANCE_NAME",
        help="This process's name; its consumer group is <prefix>.<instance-name>.",
    ),
]
LogLevelOpt = Annotated[
    str,
    typer.Option(
        "--log-level",
        envvar="SYNKAFKA_LOG_LEVEL",
        help="DEBUG, INFO, WARNING or ERROR.",
    ),
]


def setup_logging(level: str) -> None:
    """Log to stderr in one line per record."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r}")
    logging.basicConfig(
        level=numeric,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def read_secret(value: str | None, file: Path | None, what: str) -> Secret | None:
    """A secret from a flag/environment value or the first line of a file."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read {what} file {file}: {exc.strerror}"
            ) from exc
        first = text.splitlines()[0] if text else ""
        return Secret(first.strip())
    return Secret(value) if value else None


def kafka_settings(
    bootstrap_servers: str,
    security_protocol: str = "PLAINTEXT",
    sasl_mechanism: str | None = None,
    kafka_username: str | None = None,
    kafka_password: str | None = None,
    kafka_password_file: Path | None = None,
    ssl_ca: Path | None = None,
    ssl_cert: Path | None = None,
    ssl_key: Path | None = None,
    overrides: list[str] | None = None,
) -> KafkaSettings:
    """Build :class:`KafkaSettings` from the shared options."""
    return KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        security_protocol=security_protocol,
        sasl_mechanism=sasl_mechanism,
        sasl_username=kafka_username,
        sasl_password=read_secret(
            kafka_password, kafka_password_file, "Kafka password"
        ),
        ssl_ca_location=str(ssl_ca) if ssl_ca else None,
        ssl_certificate_location=str(ssl_cert) if ssl_cert else None,
        ssl_key_location=str(ssl_key) if ssl_key else None,
        overrides=parse_overrides(overrides or []),
    )


def resolve_prefix(prefix: str | None, server_name: str) -> str:
    """The explicit prefix, or ``synapse.<server_name>``."""
    return prefix or default_prefix(server_name)


def config_default_map(path: Path, commands: dict[str, Any]) -> dict[str, Any]:
    """Turn a TOML file into click's ``default_map`` for every command.

    Top-level scalar keys apply to every command; a table named after a command (or
    ``[topics.ensure]`` for a sub-command) overrides them for that command. Keys may be
    written with ``-`` or ``_``.

    Args:
        path: the TOML file.
        commands: the command tree, name -> None (a command) or a nested dict (a group).
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc

    def norm(table: dict[str, Any]) -> dict[str, Any]:
        return {
            k.replace("-", "_"): v for k, v in table.items() if not isinstance(v, dict)
        }

    def build(
        tree: dict[str, Any], table: dict[str, Any], inherited: dict[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sub in tree.items():
            own = table.get(name, {})
            own = own if isinstance(own, dict) else {}
            merged = {**inherited, **norm(own)}
            out[name] = (
                build(sub, own, merged) | merged if isinstance(sub, dict) else merged
            )
        return out

    return build(commands, data, norm(data))
