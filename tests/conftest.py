"""Fixtures and options shared by every test tier.

``--kafka-bootstrap HOST:PORT`` points the integration tests at a broker that is
already running (aiokafka's ``--docker-image`` idea); without it the harness starts
its own Kafka. The option lives here so pytest knows it whichever folder is run.
"""

from __future__ import annotations

import re
import uuid

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kafka-bootstrap",
        metavar="HOST:PORT",
        default=None,
        help=(
            "use this already-running Kafka broker for integration tests instead of "
            "starting one (tests that restart the broker are then skipped)"
        ),
    )


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A lowercase name unique to this test run, for topics, groups and databases.

    Made of ``[a-z0-9_]`` only, at most 48 characters, so it is valid as a Kafka
    topic, a consumer group and (quoted or not) a PostgreSQL identifier.
    """
    stem = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")[:30]
    return f"t_{stem}_{uuid.uuid4().hex[:12]}"
