"""A second, locked-down Kafka broker for the security tests (SASL and ACLs, as docs/security.md describes).

The session's ordinary broker stays PLAINTEXT; this one adds two client listeners:

* ``SASL_SSL``: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN over TLS. SCRAM users are
  created at format time with ``--add-scram``; PLAIN users live in the listener's JAAS
  line (Kafka's PLAIN server module keeps them there).
* ``SSL``: TLS with a *required* client certificate; the principal is the
  certificate's subject (``User:CN=synkafka-client``).

Every certificate is made in the test with ``openssl``: a CA, a server certificate
for ``IP:127.0.0.1`` (librdkafka checks the host name), a client certificate with an
encrypted key, and an unrelated "rogue" CA for the untrusted-certificate test.

ACLs are enforced by ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``:
only ``User:admin`` (and ``User:ANONYMOUS``, the PLAINTEXT controller and readiness
listener, see section 9) are super users, so the SASL_SSL and SSL listeners grant
nothing but what the ACL script adds. Tests must use only those two listeners.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapter.core.config import KafkaSettings, Secret
from adapter.core.errors import ServiceError
from adapter.devstack.services import KafkaBroker

__all__ = [
    "ADMIN",
    "CLIENT_CN",
    "SCRAM_USERS",
    "CertificateSet",
    "SecureKafka",
    "make_certificates",
    "secure_kafka",
    "start_secure_broker",
]

ADMIN = "admin"
"""The super user (SCRAM-SHA-512)."""

SCRAM_USERS = ("bridge", "consumer", "presence", "lag", "topicadmin", "ipreader")
"""Non-admin SCRAM-SHA-512 users; each test grants them roles with deploy/acls.py."""

SCRAM_256_USER = "sha256user"
PLAIN_USER = "plainuser"
CLIENT_CN = "synkafka-client"

_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ServiceError(f"openssl {args[0]} failed: {result.stderr.strip()}")


@dataclass(frozen=True)
class CertificateSet:
    """The PEM files one test session uses.

    Attributes:
        ca: the CA the broker's and the client's certificates chain to.
        server_pem: the broker keystore: unencrypted PKCS#8 key + certificate.
        client_cert: the client certificate (``CN=synkafka-client``).
        client_key: the client key, encrypted (PKCS#8, AES-256).
        client_key_password: the client key's password.
        rogue_ca: a CA nobody signed with: trusting only it must fail.
    """

    ca: Path
    server_pem: Path
    client_cert: Path
    client_key: Path
    client_key_password: str
    rogue_ca: Path


def _ca(folder: Path, name: str, cn: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    return key, cert


def _leaf(
    folder: Path, name: str, cn: str, ca: tuple[Path, Path], extensions: str
) -> tuple[Path, Path]:
    key, csr, cert = (folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext_file = folder / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-sha256",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[1]), "-CAkey", str(ca[0]),
        "-CAcreateserial", "-days", "2", "-sha256", "-out", str(cert),
        "-extfile", str(ext_file),
        cwd=folder,
    )  # fmt: skip
    return key, cert


def make_certificates(folder: Path) -> CertificateSet:
    """Make a CA, a server certificate for 127.0.0.1, a client certificate, a rogue CA.

    ``openssl req -nodes`` in OpenSSL 3 writes unencrypted PKCS#8 (``BEGIN PRIVATE
    KEY``), the only key form a Kafka PEM keystore takes without ``ssl.key.password``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = _ca(folder, "ca", "synkafka test CA")
    server_key, server_crt = _leaf(
        folder,
        "server",
        "127.0.0.1",
        ca,
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    server_pem = folder / "server.pem"
    server_pem.write_text(server_key.read_text() + server_crt.read_text())
    client_plain_key, client_crt = _leaf(
        folder, "client", CLIENT_CN, ca, "extendedKeyUsage=clientAuth\n"
    )
    password = secrets.token_urlsafe(12)
    client_key = folder / "client-encrypted.key"
    _openssl(
        "pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in", str(client_plain_key),
        "-out", str(client_key), "-passout", f"pass:{password}",
        cwd=folder,
    )  # fmt: skip
    client_plain_key.unlink()
    _, rogue = _ca(folder, "rogue-ca", "not the synkafka CA")
    return CertificateSet(
        ca=ca[1],
        server_pem=server_pem,
        client_cert=client_crt,
        client_key=client_key,
        client_key_password=password,
        rogue_ca=rogue,
    )


@dataclass
class SecureKafka:
    """The running secure broker and everything a client needs to reach it.

    Attributes:
        broker: the broker process (its PLAINTEXT listener is unrestricted: don't use it).
        certs: the PEM files.
        passwords: every user's password by name (admin and SCRAM users, PLAIN user).
        folder: where the certificates and password files are.
    """

    broker: KafkaBroker
    certs: CertificateSet
    passwords: dict[str, str]
    folder: Path
    _files: dict[str, Path] = field(default_factory=dict)

    @property
    def sasl_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the SASL_SSL listener."""
        return f"127.0.0.1:{self.broker.listener_port('SASL_SSL')}"

    @property
    def ssl_bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the mutual-TLS listener."""
        return f"127.0.0.1:{self.broker.listener_port('SSL')}"

    def password_file(self, user: str) -> Path:
        """A file holding ``user``'s password (first line), mode 0600."""
        if user not in self._files:
            path = self.folder / f"{user}.password"
            path.write_text(self.passwords[user] + "\n")
            path.chmod(0o600)
            self._files[user] = path
        return self._files[user]

    def settings(
        self,
        user: str,
        *,
        mechanism: str = "SCRAM-SHA-512",
        password: str | None = None,
    ) -> KafkaSettings:
        """SASL_SSL settings for ``user`` (its real password unless one is given)."""
        return KafkaSettings(
            bootstrap_servers=self.sasl_bootstrap,
            security_protocol="SASL_SSL",
            sasl_mechanism=mechanism,
            sasl_username=user,
            sasl_password=Secret(password or self.passwords[user]),
            ssl_ca_location=str(self.certs.ca),
        )

    def mtls_settings(self) -> KafkaSettings:
        """SSL settings with the client certificate and its encrypted key."""
        return KafkaSettings(
            bootstrap_servers=self.ssl_bootstrap,
            security_protocol="SSL",
            ssl_ca_location=str(self.certs.ca),
            ssl_certificate_location=str(self.certs.client_cert),
            ssl_key_location=str(self.certs.client_key),
            ssl_key_password=Secret(self.certs.client_key_password),
        )

    def cli_args(self, user: str, *, mechanism: str = "SCRAM-SHA-512") -> list[str]:
        """``synkafka`` connection flags for ``user``; the password comes from a file."""
        return [
            "--bootstrap-servers", self.sasl_bootstrap,
            "--security-protocol", "SASL_SSL",
            "--sasl-mechanism", mechanism,
            "--kafka-username", user,
            "--kafka-password-file", str(self.password_file(user)),
            "--ssl-ca", str(self.certs.ca),
        ]  # fmt: skip


def _scram_arg(mechanism: str, user: str, password: str) -> list[str]:
    # One argv element per user; values can't contain ',' (token_urlsafe has none).
    return ["--add-scram", f"{mechanism}=[name={user},password={password}]"]


def broker_properties(
    certs: CertificateSet, plain_passwords: dict[str, str]
) -> dict[str, str]:
    """The ``server.properties`` additions: listeners' TLS and SASL, the authorizer."""
    plain_users = " ".join(f'user_{u}="{p}"' for u, p in plain_passwords.items())
    return {
        "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512,PLAIN",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": f"{_SCRAM_MODULE} required;",
        "listener.name.sasl_ssl.plain.sasl.jaas.config": f"{_PLAIN_MODULE} required {plain_users};",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(certs.server_pem),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certs.ca),
        "listener.name.ssl.ssl.client.auth": "required",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "super.users": f"User:{ADMIN};User:ANONYMOUS",
        "allow.everyone.if.no.acl.found": "false",
    }


def start_secure_broker(folder: Path) -> SecureKafka:
    """Make certificates and users, then start the broker (the caller closes it).

    Raises:
        ServiceError: openssl failed or the broker did not start.
    """
    certs = make_certificates(folder / "pki")
    passwords = {
        name: secrets.token_urlsafe(16)
        for name in (ADMIN, *SCRAM_USERS, SCRAM_256_USER, PLAIN_USER)
    }
    format_args: list[str] = []
    for name in (ADMIN, *SCRAM_USERS):
        format_args += _scram_arg("SCRAM-SHA-512", name, passwords[name])
    format_args += _scram_arg(
        "SCRAM-SHA-256", SCRAM_256_USER, passwords[SCRAM_256_USER]
    )
    broker = KafkaBroker(
        run_dir=folder / "broker",
        extra_listeners={"SASL_SSL": "SASL_SSL", "SSL": "SSL"},
        extra_properties=broker_properties(certs, {PLAIN_USER: passwords[PLAIN_USER]}),
        format_args=format_args,
    )
    try:
        broker.start()
    except ServiceError:
        broker.close()
        raise
    return SecureKafka(broker, certs, passwords, folder / "pki")


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A session-wide SASL_SSL + mutual-TLS broker with ACLs enforced."""
    folder = tmp_path_factory.mktemp("secure-kafka")
    try:
        secure = start_secure_broker(folder)
    except ServiceError as exc:
        pytest.fail(f"the secure test Kafka broker did not start: {exc}", pytrace=False)
    try:
        yield secure
    finally:
        secure.broker.close()
