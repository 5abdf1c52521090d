"""The health server answers real HTTP requests on 127.0.0.1.

``/metrics`` renders the registry, ``/health`` and ``/ready`` follow the injected
callables from one request to the next, every other path is 404, and the server
binds, reports its port and lets go of it cleanly.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import CollectorRegistry

from adapter.core.errors import ConfigError
from adapter.io.metrics import Metrics
from adapter.runtime.health import DEFAULT_HOST, DEFAULT_PORT, Check, HealthServer


@dataclass
class _State:
    """What the injected callables report; tests flip it between requests."""

    alive: Check = field(default_factory=lambda: Check(ok=True))
    broker: Check = field(default_factory=lambda: Check(ok=True))
    streams: dict[str, bool] = field(default_factory=dict)
    raise_in_ready: bool = False

    def ready(self) -> dict[str, bool]:
        if self.raise_in_ready:
            raise RuntimeError("bug in a readiness callable")
        return dict(self.streams)


@dataclass
class _Served:
    server: HealthServer
    state: _State
    metrics: Metrics


def _get(
    server: HealthServer, path: str, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def served() -> Iterator[_Served]:
    state = _State()
    metrics = Metrics(CollectorRegistry())
    server = HealthServer(
        metrics.registry,
        alive=lambda: state.alive,
        broker=lambda: state.broker,
        ready=state.ready,
        port=0,
    )
    server.start()
    try:
        yield _Served(server, state, metrics)
    finally:
        server.stop()


def test_defaults_are_loopback_and_9466() -> None:
    assert (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 9466)
    server = HealthServer(
        CollectorRegistry(),
        alive=lambda: Check(True),
        broker=lambda: Check(True),
        ready=dict,
    )
    assert (server.host, server.port, server.running) == ("127.0.0.1", 9466, False)


def test_port_zero_binds_a_free_port_and_reports_it(served: _Served) -> None:
    assert served.server.port != 0
    assert served.server.url == f"http://127.0.0.1:{served.server.port}"
    assert served.server.running


def test_metrics_serves_synkafka_series(served: _Served) -> None:
    served.metrics.commands_in.labels(command="RDATA", stream="events").inc(2)
    served.metrics.caught_up.labels(stream="events").set(1)
    status, headers, body = _get(served.server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    assert 'synkafka_commands_in_total{command="RDATA",stream="events"} 2.0' in text
    assert 'synkafka_caught_up{stream="events"} 1.0' in text
    # A query string does not change the route.
    assert _get(served.server, "/metrics?name[]=x")[0] == 200


def test_health_flips_with_the_alive_and_broker_callables(served: _Served) -> None:
    assert _get(served.server, "/health")[::2] == (200, b"ok\n")

    served.state.alive = Check(False, "main loop last ran 42 s ago")
    status, headers, body = _get(served.server, "/health")
    assert (status, body) == (503, b"not alive: main loop last ran 42 s ago\n")
    assert headers["Content-Type"].startswith("text/plain")

    served.state.alive = Check(True)
    served.state.broker = Check(False, "no broker answered\nfor 30 s")
    status, _, body = _get(served.server, "/health")
    assert (status, body) == (503, b"broker unreachable: no broker answered for 30 s\n")

    served.state.broker = Check(False)
    assert _get(served.server, "/health")[::2] == (503, b"broker unreachable\n")

    served.state.broker = Check(True)
    assert _get(served.server, "/health")[::2] == (200, b"ok\n")


def test_ready_flips_with_the_caught_up_callable(served: _Served) -> None:
    served.state.streams = {"events": True, "typing": False, "receipts": False}
    status, headers, body = _get(served.server, "/ready")
    assert status == 503
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "ready": False,
        "not_caught_up": ["receipts", "typing"],
        "streams": {"events": True, "receipts": False, "typing": False},
    }

    served.state.streams = {"events": True, "typing": True, "receipts": True}
    status, _, body = _get(served.server, "/ready")
    assert status == 200
    assert json.loads(body)["ready"] is True
    assert json.loads(body)["not_caught_up"] == []


def test_ready_with_no_streams_is_ready(served: _Served) -> None:
    status, _, body = _get(served.server, "/ready")
    assert (status, json.loads(body)["ready"]) == (200, True)


def test_a_raising_callable_gives_503_and_the_server_keeps_serving(
    served: _Served,
) -> None:
    served.state.raise_in_ready = True
    status, _, body = _get(served.server, "/ready")
    assert status == 503
    assert b"check failed" in body
    served.state.raise_in_ready = False
    assert _get(served.server, "/ready")[0] == 200


@pytest.mark.parametrize(
    "path", ["/", "/metric", "/metrics/extra", "/healthz", "/ready/", "/favicon.ico"]
)
def test_other_paths_are_404(served: _Served, path: str) -> None:
    status, _, body = _get(served.server, path)
    assert (status, body) == (404, b"not found\n")


def test_head_sends_headers_without_a_body(served: _Served) -> None:
    status, headers, body = _get(served.server, "/health", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "3"


def test_stop_releases_the_port_and_is_idempotent(served: _Served) -> None:
    port = served.server.port
    served.server.stop()
    served.server.stop()
    assert not served.server.running
    with socket.create_server(("127.0.0.1", port)):
        pass  # the port is free again


def test_start_twice_is_an_error(served: _Served) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        served.server.start()


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = HealthServer(
            CollectorRegistry(),
            alive=lambda: Check(True),
            broker=lambda: Check(True),
            ready=dict,
            port=port,
        )
        with pytest.raises(
            ConfigError, match=re.escape(f"cannot listen on 127.0.0.1:{port}")
        ):
            server.start()
    assert not server.running


def test_an_out_of_range_port_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"0\.\.65535"):
        HealthServer(
            CollectorRegistry(),
            alive=lambda: Check(True),
            broker=lambda: Check(True),
            ready=dict,
            port=70000,
        )


def test_context_manager_starts_and_stops() -> None:
    server = HealthServer(
        CollectorRegistry(),
        alive=lambda: Check(True),
        broker=lambda: Check(True),
        ready=dict,
        port=0,
    )
    with server:
        assert _get(server, "/health")[0] == 200
    assert not server.running
