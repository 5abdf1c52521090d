"""A throwaway Redis server on 127.0.0.1, from the system's ``redis-server``.

The server runs in the foreground as our child (never ``--daemonize``), with no
persistence (``--save ""``, ``--appendonly no``) and the parent-death signal, so it
cannot outlive the test run. The port is kept across :meth:`RedisServer.restart`, as
Synapse expects when it reconnects.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import redis

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import ManagedService, free_port

__all__ = ["RedisServer", "find_redis_server"]

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S = 15.0


def find_redis_server() -> str:
    """Return the path of ``redis-server``.

    Raises:
        ServiceError: it is not installed.
    """
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
    )
    if path is None:
        raise ServiceError(
            "redis-server not found; install the Debian package redis-server with: "
            "apt-get install -y redis-server"
        )
    return path


class RedisServer(ManagedService):
    """A private ``redis-server`` bound to 127.0.0.1.

    Args:
        run_dir: working folder and log location. ``None`` makes a temporary one that
            :meth:`close` removes.
        port: the TCP port; ``None`` picks a free one.
        ready_timeout_s: how long :meth:`start` waits for ``PING`` to succeed.
    """

    name = "redis"
    host = "127.0.0.1"

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        port: int | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        self.executable = find_redis_server()
        super().__init__(run_dir=run_dir, ready_timeout_s=ready_timeout_s)
        self.port = port if port is not None else free_port()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, for ``redis.Redis.from_url``."""
        return f"redis://{self.host}:{self.port}/0"

    def address(self) -> str:
        """The server's URL."""
        return self.url

    def start(self) -> None:
        """Start the server and wait until it answers ``PING``.

        Raises:
            ServiceError: it exited or did not answer within ``ready_timeout_s``.
        """
        if self.running():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._launch(
            [
                self.executable,
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--daemonize",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.run_dir),
                "--logfile",
                "",  # stdout, which goes to log_path
            ]
        )

    def _probe(self) -> bool:
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
