"""Settings values and their validation; no I/O.

Settings are frozen dataclasses built by the CLI from flags, ``SYNKAFKA_*``
environment variables and an optional TOML file (the CLI reads those; this module
never touches ``os.environ`` or the file system). Kafka settings turn into a
librdkafka configuration dict with :meth:`KafkaSettings.to_librdkafka`; ``-X key=value``
overrides pass through last, as kcat does.

Secrets are wrapped in :class:`Secret`, whose ``repr`` and ``str`` never show the
value, so a settings object can be logged or shown in a traceback safely. The same
holds for secrets passed as ``-X`` overrides (``-X sasl.password=...``): the
settings' ``repr`` and :meth:`KafkaSettings.redacted` mask every key that
:func:`is_secret_key` names. :func:`with_url_password` puts a password read from a
file into a Redis or PostgreSQL URL, and :func:`redact_url` takes it out again for
messages.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from adapter.core.errors import ConfigError

__all__ = [
    "DEFAULT_BOOTSTRAP_SERVERS",
    "SECURITY_PROTOCOLS",
    "KafkaSettings",
    "Secret",
    "check_bootstrap_servers",
    "is_secret_key",
    "parse_overrides",
    "redact_text",
    "redact_url",
    "with_url_password",
]

DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# librdkafka property names are dotted lowercase words.
_PROPERTY_RE = re.compile(r"^[a-z][a-z0-9_.]*$")
# Keys whose values are secrets, wherever they come from (flags or -X).
_SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.key.pem",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.passphrase",
        "sasl.oauthbearer.assertion.private.key.pem",
    }
)
# Anything that looks like one of these is masked too (future librdkafka properties).
_SECRET_WORDS = ("password", "secret", "passphrase", ".pem")
_MASK = "***"
# One bootstrap entry as librdkafka reads it: [proto://]host[:port].
_BOOTSTRAP_ENTRY_RE = re.compile(
    r"^(?:(?P<proto>[A-Za-z_]+)://)?"
    r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/\s]+)|(?P<bare>[0-9A-Fa-f:.]+))"
    r"(?::(?P<port>[0-9]+))?$"
)
_HOST_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or logs."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def is_secret_key(key: str) -> bool:
    """Whether a librdkafka property holds a secret (its value is never shown).

    Args:
        key: a librdkafka property name such as ``sasl.password``.

    Returns:
        True for the known secret properties and any name containing ``password``,
        ``secret``, ``passphrase`` or ``.pem`` (an inline key or certificate).
    """
    return key in _SECRET_KEYS or any(word in key for word in _SECRET_WORDS)


def redact_text(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """``text`` with every occurrence of each secret value replaced by ``***``.

    For messages built from third-party strings that might echo a secret back (a
    driver error quoting its connection string, for instance).

    Args:
        text: the message.
        secrets: the values to hide; empty values and ``None`` are ignored.
    """
    values = sorted(
        {s.value if isinstance(s, Secret) else s for s in secrets if s is not None}
        - {""},
        key=len,
        reverse=True,
    )
    for value in values:
        text = text.replace(value, _MASK)
    return text


def with_url_password(
    url: str, password: Secret | None, *, username: str | None = None
) -> str:
    """Put a password (and optionally a user name) into a ``scheme://`` URL.

    Used for Redis (``redis://``, ``rediss://``) and PostgreSQL (``postgresql://``)
    URLs whose password comes from a file or the environment. Both are
    percent-encoded, so any character works. A password already in the URL is
    replaced; with ``password=None`` and no ``username`` the URL is returned as is.

    Args:
        url: the URL, for example ``rediss://redis.internal:6380/0``.
        password: the password to put in.
        username: the user name (Redis ACL user, PostgreSQL role); keeps the URL's
            own when None.

    Raises:
        ConfigError: ``url`` is not a ``scheme://host...`` URL.
    """
    if password is None and username is None:
        return url
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ConfigError(
            f"expected a scheme://host URL to add a password to, got {redact_url(url)!r}"
        )
    host = parts.netloc.rpartition("@")[2]
    # urlsplit unquotes the user name, so quote whichever one we keep.
    user = quote(username if username is not None else parts.username or "", safe="")
    userinfo = user
    if password is not None:
        userinfo = f"{user}:{quote(password.value, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def redact_url(url: str) -> str:
    """``url`` with the password of its user info (if any) replaced by ``***``.

    Query parameters named like secrets (``password=``, ``sslpassword=``) are masked
    as well, so a libpq URL can be shown in a message.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}:{_MASK}@{host}" if sep else netloc
    query = "&".join(
        f"{k}={_MASK}" if is_secret_key(k.lower()) else f"{k}{sep}{v}"
        for k, sep, v in (item.partition("=") for item in parts.query.split("&"))
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query if parts.query else ""))


def check_bootstrap_servers(servers: str) -> None:
    """Refuse a bootstrap list librdkafka could not use, before any client exists.

    librdkafka accepts almost any string and then fails to resolve it forever (a
    ``notahost::::`` becomes the host ``[notahost::::]:9092``), so a typo would be
    retried like an unreachable broker. Each comma-separated entry must be
    ``[protocol://]host[:port]`` with a host name, an IPv4 address or an IPv6
    address (bracketed when it has a port) and a port in 1..65535.

    Raises:
        ConfigError: an entry is empty or does not parse; the message names it.
    """
    for raw in servers.split(","):
        entry = raw.strip()
        match = _BOOTSTRAP_ENTRY_RE.match(entry)
        if match is None or not _bootstrap_entry_ok(match):
            raise ConfigError(
                f"bootstrap servers {servers!r}: {entry!r} is not host:port "
                "(an IPv6 address goes in brackets: [::1]:9092)"
            )


def _bootstrap_entry_ok(match: re.Match[str]) -> bool:
    proto, port = match["proto"], match["port"]
    if proto is not None and proto.upper() not in SECURITY_PROTOCOLS:
        return False
    if port is not None and not 0 < int(port) < 65536:
        return False
    if match["host"] is not None:
        return bool(_HOST_RE.match(match["host"]))
    # An unbracketed address with colons is read whole as an address (the regex
    # leaves it no port), as librdkafka reads it.
    ip6 = match["ip6"] if match["ip6"] is not None else match["bare"]
    try:
        ipaddress.IPv6Address(ip6)
    except ValueError:
        return False
    return True


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
        check_bootstrap_servers(self.bootstrap_servers)
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
        if bool(self.ssl_certificate_location) != bool(self.ssl_key_location):
            raise ConfigError(
                "a client certificate needs its key and a key its certificate "
                "(--ssl-cert and --ssl-key go together)"
            )
        if self.ssl_key_password is not None and not self.ssl_key_location:
            raise ConfigError("an SSL key password was given without --ssl-key")

    def __repr__(self) -> str:
        # The dataclass repr would print -X overrides verbatim, secrets included.
        shown = {
            k: (_MASK if is_secret_key(k) else v) for k, v in self.overrides.items()
        }
        return (
            f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, "
            f"security_protocol={self.security_protocol!r}, "
            f"sasl_mechanism={self.sasl_mechanism!r}, "
            f"sasl_username={self.sasl_username!r}, "
            f"sasl_password={self.sasl_password!r}, "
            f"ssl_ca_location={self.ssl_ca_location!r}, "
            f"ssl_certificate_location={self.ssl_certificate_location!r}, "
            f"ssl_key_location={self.ssl_key_location!r}, "
            f"ssl_key_password={self.ssl_key_password!r}, "
            f"overrides={shown!r})"
        )

    def secrets(self) -> list[Secret]:
        """Every secret these settings hold (flags and ``-X`` overrides alike).

        Callers feed them to :func:`redact_text` before showing third-party text.
        """
        found = [s for s in (self.sasl_password, self.ssl_key_password) if s]
        found += [
            Secret(v) for k, v in self.overrides.items() if is_secret_key(k) and v
        ]
        return found

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
            k: (_MASK if is_secret_key(k) else v)
            for k, v in self.to_librdkafka().items()
        }
