"""Settings values and their validation; no I/O.

Settings are frozen dataclasses built by the CLI from flags, ``SYNKAFKA_*``
environment variables and an optional TOML file (the CLI reads those; this module
never touches ``os.environ`` or the file system). Kafka settings turn into a
librdkafka configuration dict with :meth:`KafkaSettings.to_librdkafka`; ``-X key=value``
overrides pass through last, as kcat does.

Secrets are wrapped in :class:`Secret`, whose ``repr`` and ``str`` never show the
value, so a settings object can be logged or shown in a traceback safely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from adapter.errors import ConfigError

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "SECURITY_PROTOCOLS",
    "KafkaSettings",
    "Secret",
    "default_prefix",
    "parse_overrides",
]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# librdkafka property names are dotted lowercase words.
_PROPERTY_RE = re.compile(r"^[a-z][a-z0-9_.]*$")
# Keys whose values are secrets, wherever they come from (flags or -X).
_SECRET_KEYS = frozenset(
    {"sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem"}
)


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def default_prefix(server_name: str) -> str:
    """The default topic prefix for a homeserver: ``synapse.<server_name>``."""
    return f"synapse.{server_name}"


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse ``-X key=value`` librdkafka overrides.

    Raises:
        ConfigError: an item is not ``key=value`` or the key is not a property name.
    """
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _PROPERTY_RE.match(key):
            raise ConfigError(
                f"-X expects key=value with a librdkafka property name, got {key!r}"
            )
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """How to reach the Kafka cluster.

    Attributes:
        bootstrap_servers: comma-separated ``host:port`` list.
        security_protocol: one of :data:`SECURITY_PROTOCOLS`.
        sasl_mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL protocols only).
        sasl_username: the SASL user.
        sasl_password: the SASL password.
        ssl_ca_location: CA bundle used to verify the brokers.
        ssl_certificate_location: client certificate (PEM) for mutual TLS.
        ssl_key_location: client private key (PEM) for mutual TLS.
        ssl_key_password: password of the client key, if it is encrypted.
        overrides: extra librdkafka properties (``-X``); applied last.
    """

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Secret | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise ConfigError("bootstrap servers must not be empty")
        protocol = self.security_protocol.upper()
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"security protocol must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        object.__setattr__(self, "security_protocol", protocol)
        if protocol.startswith("SASL"):
            mechanism = (self.sasl_mechanism or "").upper()
            if mechanism not in _SASL_MECHANISMS:
                raise ConfigError(
                    f"{protocol} needs a SASL mechanism ({', '.join(_SASL_MECHANISMS)})"
                )
            object.__setattr__(self, "sasl_mechanism", mechanism)
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(f"{protocol} needs a SASL username and password")

    def to_librdkafka(self) -> dict[str, str]:
        """The librdkafka properties for these settings, overrides last."""
        conf: dict[str, str] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism and self.security_protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.value
        optional = {
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.value
            if self.ssl_key_password
            else None,
        }
        conf.update({k: v for k, v in optional.items() if v})
        conf.update(self.overrides)
        return conf

    def redacted(self) -> dict[str, str]:
        """:meth:`to_librdkafka` with every secret value replaced by ``***``."""
        return {
            k: ("***" if k in _SECRET_KEYS else v)
            for k, v in self.to_librdkafka().items()
        }
