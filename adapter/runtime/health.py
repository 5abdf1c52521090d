"""One HTTP server per process: ``/metrics``, ``/health`` and ``/ready``.

What it owns: a stdlib ``ThreadingHTTPServer`` on a daemon thread, bound to one
address (``127.0.0.1:9466`` unless told otherwise; port 0 picks a free port and
:attr:`HealthServer.port` tells which). What it must not do: decide what "alive",
"broker reachable" or "caught up" mean. The process that owns the server injects
those as callables, and the server only asks them, once per request, on the
request's thread. The callables must therefore be cheap and thread-safe (read a
flag or a timestamp; never call the broker from here).

Endpoints:

* ``GET /metrics``: the given registry in Prometheus' text format.
* ``GET /health``: ``200 ok`` when ``alive()``, ``broker()`` and every other
  dependency check (Redis, the database) pass, else ``503`` with one line naming
  the failed check and its reason (``redis unreachable: ...``).
* ``GET /ready``: ``200`` when ``/health`` passes and ``ready()`` reports every
  stream caught up, else ``503``; the body is JSON either way (with
  ``"unhealthy": "<the /health line>"`` when a check failed)::

      {
          "ready": false,
          "not_caught_up": ["typing"],
          "streams": {"events": true, "typing": false},
      }

  An empty mapping means there is nothing to catch up: ready.
* Anything else: ``404``. ``HEAD`` is answered like ``GET`` without a body.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypeAlias, cast
from urllib.parse import urlsplit

from adapter.core.errors import ConfigError
from adapter.io.metrics import CollectorRegistry, render_latest

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Check",
    "DependencyStatus",
    "HealthServer",
    "Probe",
    "Readiness",
]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9466
_SHUTDOWN_POLL_S = 0.1
_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Check:
    """The answer of one probe.

    Attributes:
        ok: whether the check passed.
        reason: why it failed, shown on ``/health``; kept to one line.
    """

    ok: bool
    reason: str = ""


class DependencyStatus:
    """The last known state of a dependency, set where it is used, read by a probe.

    For a dependency used now and then (the database, opened for a backfill or a
    gap repair): the code that uses it reports each outcome with :meth:`failed` or
    :meth:`succeeded`, and :meth:`check` (a :data:`Probe`) answers from that, without
    I/O. It starts healthy: nothing has failed yet.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._check = Check(True)

    def succeeded(self) -> None:
        """The dependency answered."""
        with self._lock:
            self._check = Check(True)

    def failed(self, reason: str) -> None:
        """The dependency failed; ``reason`` shows on ``/health``."""
        with self._lock:
            self._check = Check(False, reason)

    def check(self) -> Check:
        """The last outcome, as a probe answer."""
        with self._lock:
            return self._check


Probe: TypeAlias = Callable[[], Check]
"""A liveness check: cheap, thread-safe, never blocking on I/O."""

Readiness: TypeAlias = Callable[[], Mapping[str, bool]]
"""Caught-up state per stream name (``True`` when caught up)."""


class HealthServer:
    """Serves ``/metrics``, ``/health`` and ``/ready`` for one process.

    Args:
        registry: the registry ``/metrics`` renders (``Metrics.registry``).
        alive: whether the process's own loop is running.
        broker: whether the Kafka broker was reachable recently.
        ready: caught-up state per stream.
        dependencies: more checks, by what they check (``redis``, ``database``);
            a failed one shows on ``/health`` as ``<name> unreachable: <reason>``.
        host: address to bind; ``0.0.0.0`` only inside a container network.
        port: port to bind; 0 picks a free one (see :attr:`port`).

    Raises:
        ConfigError: the port is outside 0..65535.

    Example::

        server = HealthServer(
            metrics.registry,
            alive=loop_check,
            broker=broker_check,
            ready=tracker.caught_up,
            port=0,
        )
        server.start()
        print(server.url)  # http://127.0.0.1:41234
        server.stop()
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        alive: Probe,
        broker: Probe,
        ready: Readiness,
        dependencies: Mapping[str, Probe] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"metrics port must be in 0..65535, got {port}")
        self._registry = registry
        self._alive = alive
        self._broker = broker
        self._ready = ready
        self._dependencies = dict(dependencies or {})
        self._host = host
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        """The address the server binds to."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked for)."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called and :meth:`stop` was not."""
        return self._httpd is not None

    def start(self) -> None:
        """Bind and serve on a daemon thread; returns once the socket listens.

        Raises:
            ConfigError: the address cannot be bound (in use, not local, ...).
            RuntimeError: the server is already running.
        """
        if self._httpd is not None:
            raise RuntimeError("health server already started")
        try:
            httpd = _Server((self._host, self._port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _SHUTDOWN_POLL_S},
            name=f"synkafka-health-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("serving /metrics, /health and /ready on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def answer(self, path: str) -> tuple[HTTPStatus, str, bytes]:
        """The response to a GET of ``path``: status, content type and body.

        The request handler calls this on its own thread; it is public so that
        the routing can be tested without a socket.
        """
        routes = {
            "/metrics": self._metrics,
            "/health": self._health,
            "/ready": self._readiness,
        }
        route = routes.get(urlsplit(path).path)
        if route is None:
            return HTTPStatus.NOT_FOUND, _TEXT, b"not found\n"
        try:
            return route()
        except Exception:  # a probe bug must not kill the server thread
            logger.exception("%s check raised", path)
            return (
                HTTPStatus.SERVICE_UNAVAILABLE,
                _TEXT,
                b"check failed: see the process log\n",
            )

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        body, content_type = render_latest(self._registry)
        return HTTPStatus.OK, content_type, body

    def _failed_check(self) -> str | None:
        """The ``/health`` line of the first failed check, or None when all pass."""
        # The dependencies before the broker: a consumer whose database is down never
        # gets as far as connecting to Kafka, and must not be reported as cut off
        # from the broker.
        probes = [("not alive", self._alive)]
        probes += [(f"{name} unreachable", p) for name, p in self._dependencies.items()]
        probes.append(("broker unreachable", self._broker))
        for name, probe in probes:
            check = probe()
            if not check.ok:
                reason = " ".join(check.reason.split())  # one line, always
                return f"{name}: {reason}" if reason else name
        return None

    def _health(self) -> tuple[HTTPStatus, str, bytes]:
        line = self._failed_check()
        if line is not None:
            return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, f"{line}\n".encode()
        return HTTPStatus.OK, _TEXT, b"ok\n"

    def _readiness(self) -> tuple[HTTPStatus, str, bytes]:
        streams = {str(k): bool(v) for k, v in self._ready().items()}
        behind = sorted(name for name, caught_up in streams.items() if not caught_up)
        # Not ready while a dependency is down, even with every stream caught up.
        unhealthy = self._failed_check()
        body: dict[str, object] = {
            "ready": not behind and unhealthy is None,
            "not_caught_up": behind,
            "streams": streams,
        }
        if unhealthy is not None:
            body["unhealthy"] = unhealthy
        status = HTTPStatus.OK if body["ready"] else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _JSON, json.dumps(body, sort_keys=True).encode() + b"\n"


class _Server(ThreadingHTTPServer):
    """The stdlib server, carrying a reference to its :class:`HealthServer`."""

    daemon_threads = True
    app: HealthServer


class _Handler(BaseHTTPRequestHandler):
    """Routes the three paths; everything else is 404."""

    server_version = "synkafka-health"

    def do_GET(self) -> None:
        """Answer a GET."""
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        """Answer a HEAD: the GET headers without the body."""
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        status, content_type, body = cast(_Server, self.server).app.answer(self.path)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Send access lines to debug logging instead of stderr."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s", self.address_string(), format % args)
