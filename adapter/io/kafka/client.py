"""What every confluent client of synkafka shares: configuration errors and its log.

librdkafka checks its configuration when a client is created: an unknown property
("No such configuration property"), a value of the wrong type, a CA file that does
not exist. Such a ``KafkaException`` at construction can never get better by
retrying, so it becomes a :class:`~adapter.core.errors.ConfigError` (see
:func:`config_error`), which the long-running commands do not retry.
:func:`check_client_config` runs that check once, up front, on a throwaway client
that never connects, so a bad ``-X`` fails before any work starts.

librdkafka's own log goes through Python logging, never to stderr as raw
``%3|...|FAIL|`` lines: every client is given :func:`client_log` as its ``logger``
property (confluent-kafka then serves the lines from ``poll()``, on the polling
thread), and the clients' error callbacks report through it too. It logs to the
``adapter.io.kafka.client`` logger, deduplicated process-wide by a
:class:`~adapter.core.logdedup.LogDeduplicator`: while a broker is down, the
failure is logged once, then at most every 30 s with the count of lines
suppressed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as _ConfluentProducer

from adapter.core.config import KafkaSettings, redact_text
from adapter.core.errors import ConfigError
from adapter.core.logdedup import LogDeduplicator

__all__ = [
    "CLIENT_LOGGER",
    "COORDINATOR_SETTLING",
    "ClientLog",
    "check_client_config",
    "client_log",
    "config_error",
]

CLIENT_LOGGER = "adapter.io.kafka.client"

#: Errors of a group coordinator that is moving or loading its state: they pass.
COORDINATOR_SETTLING: Final = frozenset(
    {"COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR"}
)
"""The logger librdkafka's log and the clients' transient errors go to."""


class ClientLog:
    """librdkafka's ``logger``, deduplicated; the clients' error callbacks use it too.

    Args:
        logger: where lines go.
        dedup: decides which repeats to show; shared by every client of a process
            so that the consumer and its dead-letter producer, both seeing the
            broker go away, report it once.
    """

    def __init__(self, logger: logging.Logger, dedup: LogDeduplicator) -> None:
        self._logger = logger
        self._dedup = dedup

    def log(self, level: int, fmt: str, *args: object) -> None:
        """Take one librdkafka line, as confluent-kafka hands it to a ``logger``.

        confluent-kafka calls ``log(level, "%s [%s] %s", facility, client, text)``
        with the Python level of the line.
        """
        if len(args) == 3:
            facility, client, text = (str(a) for a in args)
            self.emit(level, text, f"{client} {facility}")
        else:
            self.emit(level, fmt % args if args else fmt, "librdkafka")

    def emit(self, level: int, text: str, source: str) -> None:
        """Log ``source: text`` unless the deduplicator suppresses it.

        Args:
            level: the Python logging level.
            text: the line; its kind (see :func:`~adapter.core.logdedup.line_kind`)
                decides what counts as a repeat.
            source: who reports it (``rdkafka#consumer-1 FAIL``, ``Kafka producer``).
        """
        if not self._logger.isEnabledFor(level):
            return
        verdict = self._dedup.admit(text)
        if not verdict.show:
            return
        if verdict.suppressed:
            self._logger.log(
                level,
                "%s: %s (still; %d similar lines suppressed since the last one)",
                source,
                text,
                verdict.suppressed,
            )
        else:
            self._logger.log(level, "%s: %s", source, text)


_SHARED = ClientLog(logging.getLogger(CLIENT_LOGGER), LogDeduplicator())


def client_log() -> ClientLog:
    """The process's :class:`ClientLog` (one deduplicator for every client)."""
    return _SHARED


def connected_to_a_broker(stats: Mapping[str, object]) -> bool:
    """Whether librdkafka's statistics show a connection to a real broker.

    A real broker has a node id (the bootstrap pseudo-broker has -1) and the state
    ``UP``; with every broker down there is none.
    """
    brokers = stats.get("brokers")
    if not isinstance(brokers, dict):
        return False
    return any(
        isinstance(b, dict) and b.get("state") == "UP" and b.get("nodeid", -1) != -1
        for b in brokers.values()
    )


def where(settings: KafkaSettings) -> str:
    """The bootstrap servers and protocol, for "cannot reach Kafka at ..." messages.

    Named as the client uses them: a ``-X bootstrap.servers=...`` or
    ``-X security.protocol=...`` override wins over the flags, here as in librdkafka.
    Secrets are masked in case one was pasted into the list.
    """
    conf = settings.to_librdkafka()
    servers = redact_text(conf["bootstrap.servers"], settings.secrets())
    return f"{servers} ({conf['security.protocol'].upper()})"


def config_error(exc: KafkaException, settings: KafkaSettings) -> ConfigError:
    """The :class:`ConfigError` for a client librdkafka refused to create.

    Args:
        exc: what the confluent constructor raised.
        settings: the settings used; their secrets are masked in the message.
    """
    err = exc.args[0] if exc.args else None
    reason = err.str() if isinstance(err, KafkaError) else str(exc)
    return ConfigError(
        f"invalid Kafka configuration: {redact_text(reason, settings.secrets())}"
    )


#: The properties that name a file librdkafka reads, and how a message calls each.
_FILE_PROPERTIES: Final = {
    "ssl.ca.location": "CA file (--ssl-ca)",
    "ssl.certificate.location": "client certificate (--ssl-cert)",
    "ssl.key.location": "client key (--ssl-key)",
}


def _check_files_readable(conf: Mapping[str, object]) -> None:
    """Refuse a TLS file that cannot be read, naming it and its flag.

    librdkafka's own words for it (``ssl.ca.location failed: ... BIO lib``) name
    neither the file nor the reason. A directory is accepted for the CA (librdkafka
    reads a hashed CA directory), and the special value ``probe`` is left to it.
    """
    for prop, what in _FILE_PROPERTIES.items():
        value = conf.get(prop)
        if not isinstance(value, str) or not value or value == "probe":
            continue
        path = Path(value)
        if prop == "ssl.ca.location" and path.is_dir():
            continue
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"cannot read the {what} {value}: {reason} (librdkafka property {prop})"
            ) from None


class _Discard:
    """A ``logger`` for the throwaway client: its log has nothing worth showing."""

    def log(self, *_args: object, **_kwargs: object) -> None:
        """Drop the line."""


def check_client_config(
    settings: KafkaSettings, extra: Mapping[str, str] | None = None
) -> None:
    """Have librdkafka check the settings (``-X`` overrides included) without connecting.

    A producer is created without ``bootstrap.servers`` (so it opens no connection;
    :class:`KafkaSettings` checks that list itself) and dropped at once. librdkafka
    validates every property there, consumer properties included, so this is the
    same check a real client would make, minus the network.

    Args:
        settings: the settings to check.
        extra: more properties the caller will add (checked with the settings).

    Raises:
        ConfigError: librdkafka refused a property or a value; the message quotes it.
    """
    conf: dict[str, object] = {**(extra or {}), **settings.to_librdkafka()}
    _check_files_readable(conf)
    conf.pop("bootstrap.servers", None)
    conf["logger"] = _Discard()
    try:
        client = _ConfluentProducer(conf)
    except KafkaException as exc:
        raise config_error(exc, settings) from exc
    del client
