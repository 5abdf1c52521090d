"""A real Synapse homeserver on 127.0.0.1, as a test peer for the Redis bridge.

Synapse (AGPL-3.0) is never imported here: it runs as separate child processes of
the interpreter given as ``python`` (by default ours, where ``pip install -e
'.[synapse]'`` put it), started through :class:`~adapter.devstack.services._process.
ManagedProcess`, so it gets the parent-death signal and cannot outlive us.

What runs:

* the main process (``synapse.app.homeserver``, instance name ``master``) with a
  client listener and, when a worker is wanted, a ``replication`` listener;
* optionally one ``generic_worker`` named ``worker1`` with its own client listener.
  Only a worker publishes ``USER_SYNC`` and ``USER_IP`` (for the ``/sync`` requests
  it serves), so tests that need those send ``/sync`` to :attr:`worker_client_url`.

Both use Redis replication (``redis.enabled``) on the given server and either SQLite
(a file in the run folder) or PostgreSQL (a database with C collation, which
:meth:`~adapter.devstack.services.PostgresCluster.create_database` makes). The whole
configuration is written by this module as JSON, which is valid YAML, so no
``--generate-config`` run (2.6 s) is needed: secrets and the ed25519 signing-key
seed are random bytes drawn once per instance and kept across restarts.

Ready means ``/health`` answers ``OK`` **and** the process has subscribed to the
``<server_name>`` channel, counted with ``PUBSUB NUMSUB`` against the count seen
just before the launch (so an outside subscriber such as a test capture does not
fool it). The default ``server_name`` is unique per instance, so several
homeservers can share one Redis without mixing their channels.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import (
    DEFAULT_STOP_TIMEOUT_S,
    ManagedProcess,
    ManagedService,
    free_port,
    log_tail,
    poll_until,
)

__all__ = [
    "DEFAULT_READY_TIMEOUT_S",
    "INSTALL_HINT",
    "MAIN_INSTANCE_NAME",
    "WORKER_NAME",
    "SynapseHomeserver",
    "missing_synapse_modules",
]

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S = 60.0
"""Per process; a cold start is about 2.5 s, mostly Python imports."""

INSTALL_HINT: Final = "pip install -e '.[synapse]'"
"""The command that installs Synapse with its Redis client and psycopg2."""

MAIN_INSTANCE_NAME: Final = "master"
"""The instance name the main process uses in RDATA, POSITION and LOCK_RELEASED."""

WORKER_NAME: Final = "worker1"
"""The ``worker_name`` (and instance name) of the optional generic worker."""

_STOP_TIMEOUT_S = 15.0
_HOST = "127.0.0.1"
_UNLIMITED = {"per_second": 10000, "burst_count": 10000}
# What `import synapse` needs for our configuration: Synapse itself, the Redis client
# of its `redis` extra (txredisapi, pitfall P1) and, for PostgreSQL, psycopg2.
_SQLITE_MODULES = ("synapse", "txredisapi")
_POSTGRES_MODULES = (*_SQLITE_MODULES, "psycopg2")
_FIND_SPEC_SCRIPT = (
    "import importlib.util, sys\n"
    "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
)


def missing_synapse_modules(python: str, modules: tuple[str, ...]) -> list[str]:
    """Return which of ``modules`` the interpreter ``python`` cannot import.

    Uses ``importlib.util.find_spec`` in a child process, which does not import
    Synapse (that would take two seconds).

    Args:
        python: path of the Python interpreter that will run Synapse.
        modules: top-level module names to look for.

    Raises:
        ServiceError: the interpreter could not be run.
    """
    try:
        result = subprocess.run(
            [python, "-c", _FIND_SPEC_SCRIPT, *modules],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ServiceError(f"cannot run {python} to look for Synapse: {exc}") from exc
    return result.stdout.split()


def _signing_key_line() -> str:
    """Return a Synapse signing-key file line: ``ed25519 <key id> <seed>``.

    Any 32 bytes are a valid ed25519 seed; Synapse stores it in unpadded base64.
    """
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


def _postgres_args(dsn: str) -> dict[str, Any]:
    """Turn a libpq DSN (URI or ``key=value``) into Synapse's psycopg2 ``args``."""
    try:
        params: dict[str, Any] = dict(conninfo_to_dict(dsn))
    except psycopg.Error as exc:
        raise ServiceError(f"not a PostgreSQL DSN: {exc}") from exc
    if "port" in params:
        params["port"] = int(params["port"])
    # Synapse's own connection-pool bounds; main and worker each open up to cp_max.
    return {**params, "cp_min": 1, "cp_max": 5}


class SynapseHomeserver(ManagedService):
    """A real Synapse main process, optionally with one generic worker.

    Args:
        redis_url: ``redis://[:password@]host:port[/db]`` of the Redis to replicate
            over (for example :attr:`~adapter.devstack.services.RedisServer.url`).
        database_dsn: a PostgreSQL DSN of an empty UTF8 database with C collation
            (psycopg2 engine). ``None`` uses SQLite in the run folder.
        with_worker: also run the generic worker ``worker1``, which serves the client
            API (``/sync`` in particular) on :attr:`worker_client_url`.
        server_name: the Matrix server name, which is also the Redis channel name.
            ``None`` picks a unique ``synkafka-<hex>.test``.
        run_dir: folder for configuration, database, media and logs. ``None`` makes
            a temporary one that :meth:`close` removes.
        python: the interpreter that runs Synapse (default: ours).
        ready_timeout_s: how long each process may take to become ready.

    Raises:
        ServiceError: Synapse (or its Redis client, or psycopg2 for PostgreSQL) is
            not importable by ``python``; the message says how to install it.
    """

    name = "synapse"

    def __init__(
        self,
        redis_url: str,
        *,
        database_dsn: str | None = None,
        with_worker: bool = False,
        server_name: str | None = None,
        run_dir: Path | None = None,
        python: str = sys.executable,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        needed = _POSTGRES_MODULES if database_dsn else _SQLITE_MODULES
        missing = missing_synapse_modules(python, needed)
        if missing:
            raise ServiceError(
                f"Synapse cannot run: {', '.join(missing)} not importable by "
                f"{python}; install the project's synapse extra with: {INSTALL_HINT}"
            )
        super().__init__(run_dir=run_dir, ready_timeout_s=ready_timeout_s)
        self.python = python
        self.redis_url = redis_url
        redis_parts = urlsplit(redis_url)
        if redis_parts.scheme != "redis" or redis_parts.port is None:
            raise ServiceError(f"need a redis://host:port URL, got {redis_url!r}")
        self._redis_host = redis_parts.hostname or _HOST
        self._redis_port = redis_parts.port
        self._redis_password = redis_parts.password
        self.server_name = server_name or f"synkafka-{secrets.token_hex(4)}.test"
        self.database_dsn = database_dsn
        self.with_worker = with_worker
        self.port = free_port()
        self.replication_port = free_port(exclude=[self.port])
        self.worker_port = free_port(exclude=[self.port, self.replication_port])
        self.registration_shared_secret = secrets.token_urlsafe(24)
        self._secrets = {
            "macaroon_secret_key": secrets.token_urlsafe(24),
            "form_secret": secrets.token_urlsafe(24),
            "registration_shared_secret": self.registration_shared_secret,
        }
        self._worker: ManagedProcess | None = None
        self._main_subscribers = 1
        self.worker_ready_s: float | None = None
        """Seconds from the worker's last launch until it was ready."""

    # -- addresses -------------------------------------------------------------------

    @property
    def client_url(self) -> str:
        """Base URL of the main process's client API, ``http://127.0.0.1:<port>``."""
        return f"http://{_HOST}:{self.port}"

    @property
    def worker_client_url(self) -> str | None:
        """Base URL of the worker's client API, or ``None`` without a worker."""
        return f"http://{_HOST}:{self.worker_port}" if self.with_worker else None

    @property
    def replication_url(self) -> str | None:
        """Base URL of the main process's HTTP replication listener (with a worker)."""
        return f"http://{_HOST}:{self.replication_port}" if self.with_worker else None

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or ``None`` on PostgreSQL."""
        return None if self.database_dsn else self.run_dir / "homeserver.db"

    @property
    def database_engine(self) -> str:
        """``"sqlite3"`` or ``"psycopg2"``, as in Synapse's ``database.name``."""
        return "psycopg2" if self.database_dsn else "sqlite3"

    @property
    def config_path(self) -> Path:
        """The shared configuration file (``-c`` of both processes)."""
        return self.run_dir / "homeserver.yaml"

    @property
    def worker_config_path(self) -> Path:
        """The worker's own configuration file (its second ``-c``)."""
        return self.run_dir / f"{WORKER_NAME}.yaml"

    @property
    def worker_log_path(self) -> Path:
        """The worker's console log (all runs appended)."""
        return self.run_dir / f"{WORKER_NAME}.log"

    @property
    def worker_pid(self) -> int | None:
        """The worker's process id while it runs."""
        worker = self._worker
        return worker.pid if worker is not None and worker.running() else None

    def address(self) -> str:
        """The main client URL and the server name, for messages."""
        return f"{self.client_url} ({self.server_name})"

    # -- configuration ---------------------------------------------------------------

    def _database_config(self) -> dict[str, Any]:
        if self.database_dsn:
            return {"name": "psycopg2", "args": _postgres_args(self.database_dsn)}
        return {"name": "sqlite3", "args": {"database": str(self.sqlite_path)}}

    def _main_config(self) -> dict[str, Any]:
        listeners: list[dict[str, Any]] = [
            {
                "port": self.port,
                "bind_addresses": [_HOST],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ]
        redis_config: dict[str, Any] = {
            "enabled": True,
            "host": self._redis_host,
            "port": self._redis_port,
        }
        if self._redis_password:
            redis_config["password"] = self._redis_password
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": f"{self.client_url}/",
            "report_stats": False,
            "signing_key_path": str(self.run_dir / "signing.key"),
            "media_store_path": str(self.run_dir / "media_store"),
            "listeners": listeners,
            "database": self._database_config(),
            # No network here: the default key server (matrix.org) is unreachable.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "presence": {"enabled": True},
            "redis": redis_config,
            # The defaults (rc_message 0.2/s, burst 10) answer scripted clients with 429.
            "rc_message": _UNLIMITED,
            "rc_registration": _UNLIMITED,
            "rc_login": {
                "address": _UNLIMITED,
                "account": _UNLIMITED,
                "failed_attempts": _UNLIMITED,
            },
            "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
            "rc_invites": {
                "per_room": _UNLIMITED,
                "per_user": _UNLIMITED,
                "per_issuer": _UNLIMITED,
            },
            "rc_presence": {"per_user": _UNLIMITED},
            **self._secrets,
        }
        if self.with_worker:
            # Workers reach the main process over HTTP replication; they refuse to
            # start without instance_map.main.
            listeners.append(
                {
                    "port": self.replication_port,
                    "bind_addresses": [_HOST],
                    "type": "http",
                    "tls": False,
                    "resources": [{"names": ["replication"]}],
                }
            )
            config["instance_map"] = {
                "main": {"host": _HOST, "port": self.replication_port}
            }
        return config

    def _worker_config(self) -> dict[str, Any]:
        return {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": WORKER_NAME,
            "worker_listeners": [
                {
                    "type": "http",
                    "port": self.worker_port,
                    "bind_addresses": [_HOST],
                    "resources": [{"names": ["client"]}],
                }
            ],
        }

    def write_config(self) -> None:
        """Write the configuration files and, once, the signing key.

        :meth:`start` calls this; it is public for looking at the files without
        starting anything. JSON is written because it is valid YAML.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "media_store").mkdir(exist_ok=True)
        key_path = self.run_dir / "signing.key"
        if not key_path.exists():
            key_path.write_text(_signing_key_line())
            key_path.chmod(0o600)
        self.config_path.write_text(json.dumps(self._main_config(), indent=2) + "\n")
        self.config_path.chmod(0o600)  # holds the shared secrets
        if self.with_worker:
            self.worker_config_path.write_text(
                json.dumps(self._worker_config(), indent=2) + "\n"
            )

    # -- readiness -------------------------------------------------------------------

    def _redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=2)

    def subscriber_count(self) -> int:
        """Return ``PUBSUB NUMSUB <server_name>``: every subscriber of the channel."""
        client = self._redis()
        try:
            counts = client.pubsub_numsub(self.server_name)
        except redis.RedisError as exc:
            raise ServiceError(f"cannot ask Redis for subscribers: {exc}") from exc
        finally:
            client.close()
        return int(counts[0][1]) if counts else 0

    @staticmethod
    def _health_ok(base_url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as response:  # noqa: S310 - http://127.0.0.1 only
                return bool(response.read() == b"OK")
        except (OSError, urllib.error.URLError):
            return False

    def _ready(self, base_url: str, subscribers: int) -> bool:
        return self._health_ok(base_url) and self.subscriber_count() >= subscribers

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the main process, then the worker if wanted; wait for each.

        Raises:
            ServiceError: a process exited or did not become ready within
                ``ready_timeout_s``; the message carries the tail of its log.
        """
        if self.running():
            return
        self.stop()  # a half-running pair (one process died) starts over
        self.write_config()
        baseline = self.subscriber_count()
        self._launch_main(baseline + 1)
        if self.with_worker:
            try:
                self._start_worker(baseline + 2)
            except BaseException:
                self.stop()
                raise

    def _launch_main(self, subscribers: int) -> None:
        """Start the main process.

        It counts as ready once ``/health`` answers and its Redis channel has at least
        ``subscribers`` subscribers (the processes started before it, plus itself).
        """
        self._main_subscribers = subscribers
        self._launch(
            [
                self.python,
                "-m",
                "synapse.app.homeserver",
                "--config-path",
                str(self.config_path),
            ]
        )

    def _probe(self) -> bool:
        return self._ready(self.client_url, self._main_subscribers)

    def _start_worker(self, subscribers: int) -> None:
        started = time.monotonic()
        worker = ManagedProcess(
            [
                self.python,
                "-m",
                "synapse.app.generic_worker",
                "--config-path",
                str(self.config_path),
                "--config-path",
                str(self.worker_config_path),
            ],
            log_path=self.worker_log_path,
            name=f"synapse {WORKER_NAME}",
            cwd=self.run_dir,
        )
        self._worker = worker
        worker_url = f"http://{_HOST}:{self.worker_port}"

        def check() -> bool | None:
            code = worker.returncode
            if code is not None:
                raise ServiceError(
                    f"synapse {WORKER_NAME} exited with {code} during startup; last "
                    f"lines of {self.worker_log_path}:\n"
                    f"{log_tail(self.worker_log_path)}"
                )
            return True if self._ready(worker_url, subscribers) else None

        try:
            poll_until(
                check,
                timeout_s=self.ready_timeout_s,
                what=f"synapse {WORKER_NAME} answering on {worker_url}",
            )
        except TimeoutError as exc:
            raise ServiceError(
                f"{exc}; last lines of {self.worker_log_path}:\n"
                f"{log_tail(self.worker_log_path)}"
            ) from exc
        self.worker_ready_s = time.monotonic() - started
        logger.info(
            "synapse %s ready on %s in %.1f s (pid %d)",
            WORKER_NAME,
            worker_url,
            self.worker_ready_s,
            worker.pid,
        )

    def running(self) -> bool:
        """Return whether the main process (and the worker, if wanted) run."""
        main_up = super().running()
        if not self.with_worker:
            return main_up
        return main_up and self._worker is not None and self._worker.running()

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM the worker, then the main process; SIGKILL after ``timeout_s``.

        The worker's ``CLEAR_USER_SYNC`` is lost on SIGTERM (its Redis connection
        closes first), so shutdown publishes nothing a test can rely on.
        """
        if self._worker is not None:
            code = self._worker.stop(timeout_s)
            self._worker = None
            if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
                logger.warning("synapse %s exited with %d on stop", WORKER_NAME, code)
        super().stop(min(timeout_s, DEFAULT_STOP_TIMEOUT_S))

    def kill(self) -> None:
        """SIGKILL both processes at once, as a crash would (the database is kept)."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        super().kill()

    def worker_log_tail(self, lines: int = 40) -> str:
        """The last lines of the worker's log, for error messages."""
        return log_tail(self.worker_log_path, lines)
