"""Fixtures of the bridge's tests: a server name, its topics, Redis clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from adapter.core.rows import STREAM_NAMES
from tests.integration.harness import ensure_topics


@pytest.fixture
def server_name(unique_name: str) -> str:
    return unique_name.replace("_", "-") + ".test"


@pytest.fixture
def prefix(kafka_bootstrap: str, unique_name: str) -> str:
    ensure_topics(kafka_bootstrap, unique_name, STREAM_NAMES)
    return unique_name


@pytest.fixture
def publisher(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def channel_log(redis_url: str, server_name: str) -> Iterator[list[str]]:
    """Every line published on the server's channels (to see what the bridge sends)."""
    lines: list[str] = []
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(server_name, f"{server_name}/USER_IP")
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                lines.append(message["data"].decode())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(5)
        pubsub.close()
        client.close()
