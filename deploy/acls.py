#!/usr/bin/env python3
r"""Grant synkafka's roles exactly the Kafka ACLs they need (docs/security.md).

Each role is a list of (resource, pattern, operation) entries computed from the topic
prefix; :func:`role_acls` is the single definition, used by ``--apply`` (through
confluent's ``AdminClient.create_acls``), by ``--print`` (the equivalent
``kafka-acls.sh`` lines) and by the tests. Run it as a principal allowed to ALTER the
cluster (a super user)::

    python deploy/acls.py --prefix synapse.example.com \
        --grant bridge=User:bridge \
        --grant consumer/worker1=User:worker1 \
        --grant presence-writer=User:presence \
        --grant lag-reader=User:monitoring \
        --apply -b kafka:9093 --security-protocol SASL_SSL \
        --sasl-mechanism SCRAM-SHA-512 --kafka-username admin \
        --kafka-password-file /run/secrets/kafka-admin --ssl-ca /etc/kafka/ca.pem

``ROLE/INSTANCE`` names the instance for the roles whose consumer group is per
instance (``consumer``, ``user-ip-reader``, ``dlq-reader``). ``--delete`` removes the same bindings.
Connection options and their ``SYNKAFKA_*`` environment variables are the
``synkafka`` ones.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka import KafkaException  # noqa: TID251 (a deploy script, not the adapter)
from confluent_kafka.admin import (  # noqa: TID251
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from adapter.cli.common import kafka_settings
from adapter.core import topics
from adapter.core.errors import AdapterError

__all__ = ["ROLES", "Acl", "main", "parse_grant", "role_acls", "to_kafka_acls_sh"]

Resource = Literal["topic", "group", "cluster"]
Pattern = Literal["literal", "prefixed"]

ROLES = (
    "bridge",
    "consumer",
    "presence-writer",
    "lag-reader",
    "user-ip-reader",
    "dlq-reader",
    "topic-admin",
)
"""Every role this script knows."""

_INSTANCE_ROLES = frozenset({"consumer", "user-ip-reader", "dlq-reader"})


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding for one principal, from any host.

    Attributes:
        resource: ``topic``, ``group`` or ``cluster``.
        name: the resource name (``kafka-cluster`` for the cluster).
        pattern: ``literal`` or ``prefixed`` (the name is a prefix).
        operation: Kafka's operation name in upper case (``READ``, ``WRITE``...).
    """

    resource: Resource
    name: str
    pattern: Pattern
    operation: str


def _topic(name: str, *ops: str, pattern: Pattern = "literal") -> list[Acl]:
    return [Acl("topic", name, pattern, op) for op in ops]


def _group(name: str, *ops: str, pattern: Pattern = "literal") -> list[Acl]:
    return [Acl("group", name, pattern, op) for op in ops]


def role_acls(role: str, prefix: str, instance: str | None = None) -> list[Acl]:
    """The ACLs one role needs under ``prefix``, sorted.

    READ and WRITE imply DESCRIBE in Kafka, so DESCRIBE is listed only where nothing
    else grants it. The idempotent producer needs no IDEMPOTENT_WRITE on Kafka 3.0
    and later: WRITE on a topic is enough (KIP-679).

    Args:
        role: one of :data:`ROLES`.
        prefix: the topic prefix (``synapse.<server_name>``).
        instance: the instance name, for ``consumer`` and ``user-ip-reader`` (their
            consumer group is ``<prefix>.<instance>``).

    Raises:
        ValueError: an unknown role, or a missing or unexpected instance.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if (role in _INSTANCE_ROLES) != (instance is not None):
        need = "needs" if role in _INSTANCE_ROLES else "takes no"
        raise ValueError(f"role {role} {need} an instance name (ROLE/INSTANCE)")
    streams = topics.stream_topic(prefix, "x")[: -len("x")]  # "<prefix>.stream."
    acls: list[Acl] = []
    if role == "bridge":
        # Publishes every command (Publisher routes them) and, at start, reads the
        # positions and presence topics to learn what is already on Kafka.
        acls += _topic(streams, "WRITE", pattern="prefixed")
        acls += _topic(topics.positions_topic(prefix), "WRITE", "READ")
        acls += _topic(topics.presence_topic(prefix), "WRITE", "READ")
        for topic in (
            topics.commands_topic(prefix),
            topics.user_ip_topic(prefix),
            topics.dlq_topic(prefix),
        ):
            acls += _topic(topic, "WRITE")
        acls += _group(f"{prefix}.synkafka-bridge-positions", "READ")
        acls += _group(f"{prefix}.synkafka-bridge-presence", "READ")
    elif role == "consumer":
        assert instance is not None  # noqa: S101 (checked above; narrows the type)
        acls += _topic(streams, "READ", pattern="prefixed")
        acls += _topic(topics.dlq_topic(prefix), "WRITE")
        acls += _group(topics.consumer_group(prefix, instance), "READ")
    elif role == "presence-writer":
        # Replays and follows the presence topic, writes expiry tombstones; also what
        # `synkafka presence list` needs (its group is <prefix>.presence-list-<random>).
        acls += _topic(topics.presence_topic(prefix), "READ", "WRITE")
        acls += _group(f"{prefix}.presence-", "READ", pattern="prefixed")
    elif role == "lag-reader":
        # `synkafka lag`: list and describe the groups, read their commits, the heads,
        # the newest record's time and the positions topic.
        acls += _group(f"{prefix}.", "DESCRIBE", pattern="prefixed")
        acls += _group(f"{prefix}.synkafka-lag-reader", "READ")
        acls += _topic(streams, "READ", "DESCRIBE_CONFIGS", pattern="prefixed")
        acls += _topic(topics.positions_topic(prefix), "READ")
    elif role == "user-ip-reader":
        assert instance is not None  # noqa: S101
        acls += _topic(topics.user_ip_topic(prefix), "READ")
        acls += _group(topics.consumer_group(prefix, instance), "READ")
    elif role == "dlq-reader":
        # Dead letters hold whole records (personal data) or references to them: only
        # the operator's own tooling reads them, as only the client-IP writer reads
        # user_ip.
        assert instance is not None  # noqa: S101
        acls += _topic(topics.dlq_topic(prefix), "READ")
        acls += _group(topics.consumer_group(prefix, instance), "READ")
    else:  # topic-admin: `synkafka topics ensure|describe`
        acls += _topic(
            f"{prefix}.",
            "CREATE",
            "DESCRIBE",
            "DESCRIBE_CONFIGS",
            "ALTER_CONFIGS",
            pattern="prefixed",
        )
    return sorted(acls)


def parse_grant(text: str) -> tuple[str, str | None, str]:
    """``ROLE[/INSTANCE]=PRINCIPAL`` -> ``(role, instance, principal)``.

    The principal keeps any ``=`` it contains (``User:CN=worker1,O=example``).

    Raises:
        ValueError: no ``=`` or an empty part.
    """
    head, sep, principal = text.partition("=")
    role, _, instance = head.partition("/")
    if not sep or not role or not principal or ":" not in principal:
        raise ValueError(f"--grant expects ROLE[/INSTANCE]=Type:name, got {text!r}")
    return role, instance or None, principal


_SH_RESOURCE = {"topic": "--topic", "group": "--group", "cluster": "--cluster"}


def to_kafka_acls_sh(principal: str, acl: Acl, action: str = "--add") -> str:
    """The ``kafka-acls.sh`` line that creates (or with ``--remove``, deletes) ``acl``."""
    words = [
        "kafka-acls.sh",
        '--bootstrap-server "$BOOTSTRAP"',
        '--command-config "$ADMIN_PROPERTIES"',
        action,
        f"--allow-principal '{principal}'",
        f"--operation {acl.operation.title().replace('_', '')}",
    ]
    if acl.resource == "cluster":
        words.append("--cluster")
    else:
        words.append(f"{_SH_RESOURCE[acl.resource]} '{acl.name}'")
        words.append(f"--resource-pattern-type {acl.pattern}")
    if action == "--remove":
        words.append("--force")
    return " ".join(words)


def _binding(principal: str, acl: Acl) -> AclBinding:
    resource = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "cluster": ResourceType.BROKER,
    }[acl.resource]
    pattern = (
        ResourcePatternType.PREFIXED
        if acl.pattern == "prefixed"
        else ResourcePatternType.LITERAL
    )
    return AclBinding(
        resource,
        acl.name,
        pattern,
        principal,
        "*",
        AclOperation[acl.operation],
        AclPermissionType.ALLOW,
    )


def _apply(
    admin: AdminClient, bindings: list[AclBinding], *, delete: bool, timeout_s: float
) -> None:
    futures: dict[AclBinding, Future[object]] | dict[AclBindingFilter, Future[object]]
    if delete:
        filters = [
            AclBindingFilter(
                b.restype,
                b.name,
                b.resource_pattern_type,
                b.principal,
                b.host,
                b.operation,
                b.permission_type,
            )
            for b in bindings
        ]
        futures = admin.delete_acls(filters, request_timeout=timeout_s)
    else:
        futures = admin.create_acls(bindings, request_timeout=timeout_s)
    for binding, future in futures.items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            raise AdapterError(f"cannot change ACL {binding}: {text}") from exc


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="deploy/acls.py",
        description="Grant synkafka roles their Kafka ACLs (see docs/security.md).",
    )
    parser.add_argument("--prefix", required=True, help="topic prefix")
    parser.add_argument(
        "--grant",
        action="append",
        default=[],
        metavar="ROLE[/INSTANCE]=PRINCIPAL",
        help=f"a role for a principal (repeatable); roles: {', '.join(ROLES)}",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--print", action="store_true", help="print kafka-acls.sh lines")
    mode.add_argument("--apply", action="store_true", help="create the ACLs")
    mode.add_argument("--delete", action="store_true", help="delete the ACLs")
    parser.add_argument(
        "-b",
        "--bootstrap-servers",
        default=env("SYNKAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
    )
    parser.add_argument(
        "--security-protocol", default=env("SYNKAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    )
    parser.add_argument("--sasl-mechanism", default=env("SYNKAFKA_SASL_MECHANISM"))
    parser.add_argument("--kafka-username", default=env("SYNKAFKA_KAFKA_USERNAME"))
    parser.add_argument(
        "--kafka-password-file",
        type=Path,
        default=Path(p) if (p := env("SYNKAFKA_KAFKA_PASSWORD_FILE")) else None,
        help="password file (or SYNKAFKA_KAFKA_PASSWORD); never a flag value",
    )
    parser.add_argument("--ssl-ca", type=Path, default=env("SYNKAFKA_SSL_CA"))
    parser.add_argument("--ssl-cert", type=Path, default=env("SYNKAFKA_SSL_CERT"))
    parser.add_argument("--ssl-key", type=Path, default=env("SYNKAFKA_SSL_KEY"))
    parser.add_argument("-X", dest="overrides", action="append", default=[])
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the script; returns the exit code (0 ok, 2 bad input or broker error)."""
    args = _parser().parse_args(argv)
    try:
        grants = [parse_grant(g) for g in args.grant]
        plan = [
            (principal, acl)
            for role, instance, principal in grants
            for acl in role_acls(role, args.prefix, instance)
        ]
    except ValueError as exc:
        sys.stderr.write(f"acls: error: {exc}\n")
        return 2
    if args.print:
        for principal, acl in plan:
            sys.stdout.write(to_kafka_acls_sh(principal, acl) + "\n")
        return 0
    try:
        settings = kafka_settings(
            args.bootstrap_servers,
            args.security_protocol,
            args.sasl_mechanism,
            args.kafka_username,
            os.environ.get("SYNKAFKA_KAFKA_PASSWORD"),
            args.kafka_password_file,
            args.ssl_ca,
            args.ssl_cert,
            args.ssl_key,
            args.overrides,
        )
        admin = AdminClient(
            dict[str, str | int | float | bool](settings.to_librdkafka())
        )
        _apply(
            admin,
            [_binding(p, a) for p, a in plan],
            delete=args.delete,
            timeout_s=args.timeout,
        )
    except AdapterError as exc:
        sys.stderr.write(f"acls: error: {exc}\n")
        return 2
    verb = "deleted" if args.delete else "created"
    sys.stderr.write(f"{verb} {len(plan)} ACLs for {len(grants)} grants\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
