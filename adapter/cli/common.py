"""Options every command shares, and how they become settings.

Every option has a ``SYNKAFKA_*`` environment variable and can come from the TOML file
given with ``synkafka --config FILE`` (top-level keys apply to every command, a
``[consume]`` or ``[topics.ensure]`` table to one command). Precedence: flag, then
environment, then file, then default. Secrets can be given in a file
(``--kafka-password-file``) or the environment; never as a default shown in ``--help``.

Secret options and their environment variables:

=========================  ==========================================================
secret                     from
=========================  ==========================================================
SASL password              ``--kafka-password-file`` / ``SYNKAFKA_KAFKA_PASSWORD_FILE``,
                           ``SYNKAFKA_KAFKA_PASSWORD`` (``--kafka-password`` works but
                           shows in ``ps``)
client key password        ``--ssl-key-password-file`` / ``SYNKAFKA_SSL_KEY_PASSWORD_FILE``,
                           ``SYNKAFKA_SSL_KEY_PASSWORD``
Redis password             :func:`redis_url`: ``SYNKAFKA_REDIS_PASSWORD_FILE``,
                           ``SYNKAFKA_REDIS_PASSWORD``, user ``SYNKAFKA_REDIS_USERNAME``
PostgreSQL password        :func:`db_dsn`: ``SYNKAFKA_DB_PASSWORD_FILE`` (libpq's own
                           ``PGPASSWORD``/``PGPASSFILE`` work as well)
=========================  ==========================================================

The environment fallbacks are read here even by commands that have no flag for the
secret yet, so every command honours them.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from adapter.core.config import (
    DEFAULT_BOOTSTRAP_SERVERS,
    KafkaSettings,
    Secret,
    parse_overrides,
    with_url_password,
)
from adapter.core.errors import ConfigError
from adapter.core.masking import MaskingFormatter
from adapter.core.topics import default_prefix
from adapter.io.db.connection import dsn_with_password, parse_dsn
from adapter.io.kafka.admin import Admin
from adapter.io.kafka.client import CLIENT_LOGGER, check_client_config

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "BootstrapOpt",
    "DbPasswordFileOpt",
    "InstanceOpt",
    "KafkaPasswordFileOpt",
    "KafkaPasswordOpt",
    "KafkaUserOpt",
    "LogLevelOpt",
    "MetricsHostOpt",
    "MetricsPortOpt",
    "OverridesOpt",
    "PrefixOpt",
    "RedisPasswordFileOpt",
    "SaslMechanismOpt",
    "SecurityProtocolOpt",
    "ServerNameOpt",
    "SslCaOpt",
    "SslCertOpt",
    "SslKeyOpt",
    "SslKeyPasswordFileOpt",
    "SslKeyPasswordOpt",
    "TimeoutOpt",
    "db_dsn",
    "kafka_settings",
    "masked_default_logging",
    "quiet_client_log",
    "reach_kafka",
    "read_secret",
    "redis_url",
    "require_server_name",
    "resolve_prefix",
    "setup_logging",
    "with_kafka_options",
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
SslKeyPasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--ssl-key-password",
        envvar="SYNKAFKA_SSL_KEY_PASSWORD",
        help="Password of an encrypted --ssl-key (prefer --ssl-key-password-file).",
        show_default=False,
        rich_help_panel=_KAFKA,
    ),
]
SslKeyPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--ssl-key-password-file",
        envvar="SYNKAFKA_SSL_KEY_PASSWORD_FILE",
        help="File holding the password of an encrypted --ssl-key (first line).",
        rich_help_panel=_KAFKA,
    ),
]
RedisPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--redis-password-file",
        envvar="SYNKAFKA_REDIS_PASSWORD_FILE",
        help="File holding Synapse's Redis password (first line); "
        "SYNKAFKA_REDIS_USERNAME names an ACL user.",
        show_default=False,
    ),
]
DbPasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--db-password-file",
        envvar="SYNKAFKA_DB_PASSWORD_FILE",
        help="File holding the PostgreSQL password for --db (first line).",
        show_default=False,
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
    str | None,
    typer.Option(
        "--server-name",
        envvar="SYNKAFKA_SERVER_NAME",
        help="The homeserver's server_name (required, no default; the topic prefix "
        "is synapse.<server_name> unless --prefix is given).",
        rich_help_panel=_TOPICS,
        show_default=False,
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
# Under 15 s in all with the interpreter's start-up, as the one-shot commands promise.
DEFAULT_TIMEOUT_S = 10.0
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        envvar="SYNKAFKA_TIMEOUT",
        min=0.1,
        help="Seconds to wait for Kafka to answer before giving up with one line "
        "naming the bootstrap servers.",
        rich_help_panel=_KAFKA,
    ),
]
MetricsPortOpt = Annotated[
    int,
    typer.Option(
        "--metrics-port",
        envvar="SYNKAFKA_METRICS_PORT",
        help="Port for /metrics, /health and /ready (0: a free port, -1: off).",
    ),
]
MetricsHostOpt = Annotated[
    str,
    typer.Option(
        "--metrics-host", envvar="SYNKAFKA_METRICS_HOST", help="Bind address."
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


def reach_kafka(settings: KafkaSettings, timeout_s: float) -> Admin:
    """An admin client whose broker answered within ``timeout_s``.

    One-shot commands call it first, so that an unreachable broker (down, wrong
    address, a SASL or TLS handshake that never completes) ends them within their
    ``--timeout`` with one line: ``cannot reach Kafka at <servers> (<protocol>)
    within 15 s: <reason>``. Each later request has the same timeout.

    Raises:
        KafkaIOError: no broker answered in time.
    """
    admin = Admin(settings, timeout_s=timeout_s)
    admin.cluster_id()
    return admin


def quiet_client_log() -> None:
    """Keep librdkafka's account of a failure out of a one-shot command's stderr.

    A one-shot command reports its failure in its own single line ("cannot reach
    Kafka at ..."); librdkafka's lines about the same failure, seen from inside,
    would only repeat it. Long-running commands turn the log back on with
    :func:`setup_logging`.
    """
    logging.getLogger(CLIENT_LOGGER).setLevel(logging.CRITICAL + 1)


def setup_logging(level: str) -> None:
    """Log to stderr in one line per record (librdkafka's included), tokens masked."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"unknown log level {level!r}")
    logging.getLogger(CLIENT_LOGGER).setLevel(logging.NOTSET)
    handler = logging.StreamHandler(sys.stderr)
    # Every line goes through the mask: a handler's exception, a driver's error or
    # a malformed record may quote an access token anywhere.
    handler.setFormatter(
        MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    # main() installed a masked warnings-only handler for the commands that never
    # call this one; it is replaced, and nothing else is touched.
    for default in [h for h in root.handlers if getattr(h, _DEFAULT_MARK, False)]:
        root.removeHandler(default)
    logging.basicConfig(level=numeric, handlers=[handler])


_DEFAULT_MARK = "synkafka_default"


def masked_default_logging() -> None:
    """Until a command sets up its own logging, warnings go to stderr masked.

    Without this, a one-shot command's stray warning would reach stderr through
    Python's last-resort handler, which masks nothing.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(MaskingFormatter("synkafka: %(levelname)s: %(message)s"))
    setattr(handler, _DEFAULT_MARK, True)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def read_secret(value: str | None, file: Path | None, what: str) -> Secret | None:
    """A secret from a flag/environment value or the first line of a file."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"cannot read {what} file {file}: {exc.strerror}"
            ) from exc
        except UnicodeDecodeError as exc:
            # Never show the bytes: they are (part of) the secret.
            raise ConfigError(
                f"{what} file {file} is not UTF-8 text (byte {exc.start})"
            ) from None
        first = text.splitlines()[0] if text else ""
        return Secret(first.strip())
    return Secret(value) if value else None


def _env_secret(
    value: str | None,
    file: Path | None,
    env: Mapping[str, str] | None,
    name: str,
    what: str,
) -> Secret | None:
    """A secret from its option, else ``SYNKAFKA_<name>_FILE``, else ``SYNKAFKA_<name>``."""
    if value is None and file is None:
        environ = os.environ if env is None else env
        file_name = environ.get(f"SYNKAFKA_{name}_FILE")
        file = Path(file_name) if file_name else None
        value = environ.get(f"SYNKAFKA_{name}") or None
    return read_secret(value, file, what)


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
    ssl_key_password: str | None = None,
    ssl_key_password_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> KafkaSettings:
    """Build :class:`KafkaSettings` from the shared options.

    The client key password comes from ``ssl_key_password(_file)`` or, when neither is
    given, from ``SYNKAFKA_SSL_KEY_PASSWORD_FILE`` / ``SYNKAFKA_SSL_KEY_PASSWORD``.

    Args:
        bootstrap_servers: ``--bootstrap-servers``.
        security_protocol: ``--security-protocol``.
        sasl_mechanism: ``--sasl-mechanism``.
        kafka_username: ``--kafka-username``.
        kafka_password: ``--kafka-password`` (or its environment variable).
        kafka_password_file: ``--kafka-password-file``; wins over the password.
        ssl_ca: ``--ssl-ca``.
        ssl_cert: ``--ssl-cert``.
        ssl_key: ``--ssl-key``.
        overrides: ``-X key=value`` items.
        ssl_key_password: ``--ssl-key-password``.
        ssl_key_password_file: ``--ssl-key-password-file``; wins over the password.
        env: the environment to fall back on (``os.environ`` when None).

    Raises:
        ConfigError: the settings are inconsistent or a secret file is unreadable.
    """
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
        ssl_key_password=_env_secret(
            ssl_key_password,
            ssl_key_password_file,
            env,
            "SSL_KEY_PASSWORD",
            "SSL key password",
        ),
        overrides=parse_overrides(overrides or []),
    )


def redis_url(
    url: str,
    password_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Synapse's Redis URL with its password (and ACL user) from a file or the environment.

    Mirrors Synapse's ``redis`` settings (``password``/``password_path``, ``user``,
    ``use_tls`` + certificates): the password comes from ``password_file``, else
    ``SYNKAFKA_REDIS_PASSWORD_FILE``, else ``SYNKAFKA_REDIS_PASSWORD``; the user from
    ``SYNKAFKA_REDIS_USERNAME``. TLS is the ``rediss://`` scheme, with redis-py's URL
    parameters for certificates (``?ssl_ca_certs=/ca.pem&ssl_certfile=...&ssl_keyfile=...``).
    A URL without a password in any of these places is returned unchanged.

    Args:
        url: ``redis://host:port/db`` or ``rediss://...``.
        password_file: ``--redis-password-file``.
        env: the environment to fall back on (``os.environ`` when None).

    Raises:
        ConfigError: the password file cannot be read or the URL has no host.
    """
    environ = os.environ if env is None else env
    password = _env_secret(
        None, password_file, environ, "REDIS_PASSWORD", "Redis password"
    )
    username = environ.get("SYNKAFKA_REDIS_USERNAME") or None
    return with_url_password(url, password, username=username)


def db_dsn(
    dsn: str,
    password_file: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> str:
    """Check a ``--db`` DSN and add its PostgreSQL password from a file or the environment.

    Accepted: ``postgresql://``/``postgres://`` URLs, libpq key=value strings
    (``host=... dbname=synapse``, passed to psycopg as they are) and
    ``sqlite:///path``; anything else, a bare file path included, is refused here,
    before anything connects. The password comes from ``password_file``, else
    ``SYNKAFKA_DB_PASSWORD_FILE``. Everything else (``sslmode``, ``sslrootcert``,
    ``passfile``...) is libpq's business: put it in the DSN, or use libpq's ``PG*``
    environment variables.

    Args:
        dsn: ``postgresql://user@host/db?sslmode=verify-full``,
            ``host=db.internal dbname=synapse`` or ``sqlite:///path``.
        password_file: ``--db-password-file``.
        env: the environment to fall back on (``os.environ`` when None).

    Raises:
        ConfigError: the DSN is not one of the accepted forms, the password file
            cannot be read, or a password file was given for a SQLite DSN. The
            message starts with ``--db:`` and never shows a password.
    """
    try:
        engine = parse_dsn(dsn).engine
    except ConfigError as exc:
        raise ConfigError(f"--db: {exc}") from None
    environ = os.environ if env is None else env
    if password_file is None:
        name = environ.get("SYNKAFKA_DB_PASSWORD_FILE")
        password_file = Path(name) if name else None
    if password_file is None:
        return dsn
    if engine != "postgresql":
        raise ConfigError("--db: a database password file needs a PostgreSQL DSN")
    password = read_secret(None, password_file, "database password")
    return dsn_with_password(dsn, password) if password is not None else dsn


def resolve_prefix(prefix: str | None, server_name: str | None) -> str:
    """The explicit prefix, or ``synapse.<server_name>``.

    The one rule of every command: the server name has no default (a wrong one
    silently reads another homeserver's topics); ``--prefix`` alone is enough where
    only the topics are needed.

    Raises:
        ConfigError: neither is given.
    """
    if prefix:
        return prefix
    return default_prefix(require_server_name(server_name))


def require_server_name(server_name: str | None) -> str:
    """The server name, which every command takes the same way (no default).

    Raises:
        ConfigError: it is missing or empty.
    """
    if not server_name:
        raise ConfigError(
            "--server-name is required (or SYNKAFKA_SERVER_NAME; commands that only "
            "read or write topics also accept --prefix instead)"
        )
    return server_name


_R = TypeVar("_R")

# The Kafka connection options every Kafka-facing command takes, in --help order:
# (parameter name, annotated type, default).
_KAFKA_OPTIONS: tuple[tuple[str, Any, Any], ...] = (
    ("bootstrap_servers", BootstrapOpt, DEFAULT_BOOTSTRAP_SERVERS),
    ("security_protocol", SecurityProtocolOpt, "PLAINTEXT"),
    ("sasl_mechanism", SaslMechanismOpt, None),
    ("kafka_username", KafkaUserOpt, None),
    ("kafka_password", KafkaPasswordOpt, None),
    ("kafka_password_file", KafkaPasswordFileOpt, None),
    ("ssl_ca", SslCaOpt, None),
    ("ssl_cert", SslCertOpt, None),
    ("ssl_key", SslKeyOpt, None),
    ("x", OverridesOpt, None),
    ("ssl_key_password", SslKeyPasswordOpt, None),
    ("ssl_key_password_file", SslKeyPasswordFileOpt, None),
)


def with_kafka_options(func: Callable[..., _R]) -> Callable[..., _R]:
    """Give a command the shared Kafka options as one ``kafka: KafkaSettings`` argument.

    The command declares ``kafka: KafkaSettings`` instead of a dozen options; the
    wrapper shows Typer the options (flags, ``SYNKAFKA_*`` variables, TOML keys) and
    builds the settings from them, so every command spells them the same way. The
    settings are checked by librdkafka itself before the command runs
    (:func:`~adapter.io.kafka.client.check_client_config`), so a bad ``-X`` or bootstrap
    list is refused at once, the same way by every command. librdkafka's log is
    quiet unless the command calls :func:`setup_logging` (see
    :func:`quiet_client_log`).
    """
    signature = inspect.signature(func, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "kafka"]
    added = [
        inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )
        for name, annotation, default in _KAFKA_OPTIONS
    ]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> _R:
        options = {name: kwargs.pop(name) for name, _, _ in _KAFKA_OPTIONS}
        options["overrides"] = options.pop("x")
        settings = kafka_settings(**options)
        check_client_config(settings)
        quiet_client_log()
        return func(*args, kafka=settings, **kwargs)

    params = own + added
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper
