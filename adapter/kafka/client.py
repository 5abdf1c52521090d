"""What every confluent client of synkafka shares: configuration errors.

librdkafka checks its configuration when a client is created: an unknown property
("No such configuration property"), a value of the wrong type, a CA file that does
not exist. Such a ``KafkaException`` at construction can never get better by
retrying, so it becomes a :class:`~adapter.errors.ConfigError` (see
:func:`config_error`), which the long-running commands do not retry.
:func:`check_client_config` runs that check once, up front, on a throwaway client
that never connects, so a bad ``-X`` fails before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import Producer as _ConfluentProducer

from adapter.config import KafkaSettings, redact_text
from adapter.errors import ConfigError

__all__ = ["check_client_config", "config_error"]


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
    conf.pop("bootstrap.servers", None)
    conf["logger"] = _Discard()
    try:
        client = _ConfluentProducer(conf)
    except KafkaException as exc:
        raise config_error(exc, settings) from exc
    del client
