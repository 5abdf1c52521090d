"""Real Kafka, PostgreSQL and Redis for the integration tier.

Each service is started once per session by the harness (see ``adapter.devstack.services``)
and never skipped: if one cannot start, its fixture fails with the reason and the
tail of the service's log. ``--kafka-bootstrap`` swaps in an external broker.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from adapter.core.config import KafkaSettings
from adapter.core.errors import ServiceError
from adapter.devstack.services import KafkaBroker, PostgresCluster, RedisServer
from adapter.io.kafka.producer import Producer
from adapter.runtime.publisher import Publisher


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the broker log tail to failing tests that used the harness's broker."""
    report = yield
    broker = getattr(item, "funcargs", {}).get("_kafka_broker")
    if report.failed and isinstance(broker, KafkaBroker):
        report.sections.append(
            (f"kafka broker log ({broker.log_path})", broker.log_tail(60))
        )
    return report


@pytest.fixture(scope="session")
def _kafka_broker(pytestconfig: pytest.Config) -> Iterator[KafkaBroker | None]:
    if pytestconfig.getoption("--kafka-bootstrap"):
        yield None
        return
    broker = KafkaBroker()
    try:
        broker.start()
    except ServiceError as exc:
        broker.close()
        pytest.fail(f"the test Kafka broker did not start: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka(_kafka_broker: KafkaBroker | None) -> KafkaBroker:
    """The harness's own :class:`KafkaBroker` (for tests that restart or inspect it)."""
    if _kafka_broker is None:
        pytest.skip("needs the harness's own broker; --kafka-bootstrap was given")
    return _kafka_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(
    pytestconfig: pytest.Config, _kafka_broker: KafkaBroker | None
) -> str:
    """``bootstrap.servers`` of the broker under test (ours or ``--kafka-bootstrap``)."""
    if _kafka_broker is not None:
        return _kafka_broker.bootstrap_servers
    external: str = pytestconfig.getoption("--kafka-bootstrap")
    return external


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the whole session."""
    try:
        cluster = PostgresCluster()
    except ServiceError as exc:
        pytest.fail(f"the test PostgreSQL cannot run: {exc}", pytrace=False)
    try:
        cluster.start()
    except ServiceError as exc:
        cluster.close()
        pytest.fail(f"the test PostgreSQL did not start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_dsn(postgres: PostgresCluster, unique_name: str) -> Iterator[str]:
    """DSN of a fresh, empty database (UTF8, C collation) dropped after the test."""
    dsn = postgres.create_database(unique_name)
    try:
        yield dsn
    finally:
        if postgres.running():
            postgres.drop_database(unique_name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private ``redis-server`` for the whole session."""
    try:
        server = RedisServer()
    except ServiceError as exc:
        pytest.fail(f"the test Redis cannot run: {exc}", pytrace=False)
    try:
        server.start()
    except ServiceError as exc:
        server.close()
        pytest.fail(f"the test Redis did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's Redis."""
    return redis_server.url


@pytest.fixture
def prefix(unique_name: str) -> str:
    """A topic prefix of this test's own (modules with other needs override it)."""
    return f"it.{unique_name}"


@pytest.fixture
def publisher(kafka_bootstrap: str, prefix: str) -> Publisher:
    """A publisher to the test's prefix on the session's broker."""
    return Publisher(Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)), prefix)
