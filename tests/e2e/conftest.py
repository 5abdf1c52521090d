"""A real Synapse (main process + ``worker1``) for the e2e tier, and its traffic.

The session services come from ``tests/integration/conftest.py``: its fixture
functions are imported here, which registers them for ``tests/e2e`` too. pytest
keys fixtures by the conftest that declares them, so a run of both tiers at once
starts one Redis and one PostgreSQL per tier (about a second each); Kafka starts
only if a test asks for it.

Fixtures added here (all function-scoped; a Synapse with its worker is ready in
about 3 s):

* ``synapse_server_name``: a unique ``server_name`` (which is the Redis channel);
* ``redis_capture``: a started :class:`~tests.e2e.capture.RedisCapture` of that
  server's two channels, subscribed before Synapse starts;
* ``synapse_sqlite`` / ``synapse_pg``: a started
  :class:`~adapter.devstack.services.synapse.SynapseHomeserver` with ``worker1``, on SQLite
  or on a fresh C-collation PostgreSQL database;
* ``synapse_sharded``: a started
  :class:`~adapter.devstack.services.synapse_sharded.ShardedSynapse` (main, two event
  persisters and a ``/sync`` worker) on a fresh PostgreSQL database.

A failing test that used a homeserver gets the tails of its main and worker logs as
report sections.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TypeVar

import pytest

from adapter.core.errors import ServiceError
from adapter.devstack.services import KafkaBroker
from adapter.devstack.services.synapse import SynapseHomeserver
from adapter.devstack.services.synapse_sharded import WORKERS, ShardedSynapse
from tests.e2e.capture import RedisCapture
from tests.integration.conftest import (
    _kafka_broker,
    kafka,
    kafka_bootstrap,
    pg_dsn,
    postgres,
    redis_server,
    redis_url,
)

__all__ = [
    "_kafka_broker",
    "kafka",
    "kafka_bootstrap",
    "pg_dsn",
    "postgres",
    "redis_capture",
    "redis_server",
    "redis_url",
    "synapse_pg",
    "synapse_server_name",
    "synapse_sharded",
    "synapse_sqlite",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach Synapse's and the harness broker's log tails to failing tests."""
    report = yield
    if not report.failed:
        return report
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, SynapseHomeserver):
            report.sections.append(
                (f"synapse main log ({value.log_path})", value.log_tail(60))
            )
            if value.with_worker:
                report.sections.append(
                    (
                        f"synapse worker log ({value.worker_log_path})",
                        value.worker_log_tail(60),
                    )
                )
            if isinstance(value, ShardedSynapse):
                for worker in WORKERS:
                    report.sections.append(
                        (
                            f"synapse {worker} log ({value.worker_log(worker)})",
                            value.worker_log_lines(worker, 40),
                        )
                    )
        elif isinstance(value, KafkaBroker):
            report.sections.append(
                (f"kafka broker log ({value.log_path})", value.log_tail(60))
            )
    return report


@pytest.fixture
def synapse_server_name(unique_name: str) -> str:
    """A ``server_name`` unique to this test, so homeservers never share a channel."""
    return unique_name.replace("_", "-") + ".test"


@pytest.fixture
def redis_capture(redis_url: str, synapse_server_name: str) -> Iterator[RedisCapture]:
    """Every message on ``<server_name>`` and ``<server_name>/USER_IP``, from now on."""
    with RedisCapture(redis_url, synapse_server_name) as capture:
        yield capture


_HS = TypeVar("_HS", bound=SynapseHomeserver)


def _start(homeserver: _HS) -> Iterator[_HS]:
    try:
        homeserver.start()
    except ServiceError as exc:
        homeserver.close()
        pytest.fail(f"Synapse did not start: {exc}", pytrace=False)
    try:
        yield homeserver
    finally:
        homeserver.close()


def _homeserver(
    redis_url: str, server_name: str, database_dsn: str | None = None
) -> SynapseHomeserver:
    try:
        return SynapseHomeserver(
            redis_url,
            database_dsn=database_dsn,
            server_name=server_name,
            with_worker=True,
        )
    except ServiceError as exc:  # Synapse is not installed: the message says how
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def synapse_sqlite(
    redis_url: str, synapse_server_name: str, redis_capture: RedisCapture
) -> Iterator[SynapseHomeserver]:
    """A started Synapse on SQLite with ``worker1``, replicating over the session Redis."""
    yield from _start(_homeserver(redis_url, synapse_server_name))


@pytest.fixture
def synapse_pg(
    redis_url: str,
    pg_dsn: str,
    synapse_server_name: str,
    redis_capture: RedisCapture,
) -> Iterator[SynapseHomeserver]:
    """A started Synapse on a fresh PostgreSQL database with ``worker1``."""
    yield from _start(_homeserver(redis_url, synapse_server_name, pg_dsn))


@pytest.fixture
def synapse_sharded(
    redis_url: str, pg_dsn: str, synapse_server_name: str
) -> Iterator[ShardedSynapse]:
    """A started sharded Synapse (main, ``persister1``, ``persister2``, ``sync1``)."""
    try:
        homeserver = ShardedSynapse(
            redis_url, database_dsn=pg_dsn, server_name=synapse_server_name
        )
    except ServiceError as exc:  # Synapse is not installed: the message says how
        pytest.fail(str(exc), pytrace=False)
    yield from _start(homeserver)
