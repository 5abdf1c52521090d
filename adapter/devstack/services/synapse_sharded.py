"""A real Synapse with sharded event persisters and a ``/sync`` worker, on PostgreSQL.

:class:`ShardedSynapse` extends :class:`~adapter.devstack.services.synapse.SynapseHomeserver`
(whose configuration, secrets and readiness rules it keeps) to the layout big
deployments use:

* ``main`` (instance name ``master``): the client API for everything but ``/sync``,
  and an HTTP ``replication`` listener;
* ``persister1`` and ``persister2``: generic workers named in
  ``stream_writers.events``, so every event is persisted (and its ``RDATA events``
  published) by one of them. Synapse picks the persister of a room by hashing the
  room ID, so with few rooms one persister may get far fewer events than the other;
* ``sync1``: a generic worker with a client listener, serving ``/sync`` (it publishes
  ``USER_SYNC`` and ``USER_IP``).

What Synapse 1.163 needs for this, as measured: every stream writer and ``main`` need
an HTTP listener with the ``replication`` resource and an ``instance_map`` entry
pointing at it (other processes send their writes there); the ``/sync`` worker gets
one too. Each worker runs ``python -m synapse.app.generic_worker`` with the shared
``homeserver.yaml`` and its own file (``worker_app``, ``worker_name``,
``worker_listeners``). Workers refuse a database whose schema ``main`` has not
prepared yet, so :meth:`start` starts ``main`` first and then every worker at once. Replication goes over Redis only (SQLite cannot be shared by
processes, hence PostgreSQL).

Ready means, as for the base class: ``/health`` answers ``OK`` on each process (every
HTTP listener of a worker serves it) **and** the channel ``<server_name>`` has one
more Redis subscriber per process than it had before the launch.

Faults for tests: :meth:`kill_worker` (SIGKILL, as a crash), :meth:`stop_worker`
(SIGTERM), :meth:`start_worker` and :meth:`restart_worker`. A persister killed and
started again resumes at its persisted stream position; a restarted worker takes a
new random instance ID (five letters) in its ``USER_SYNC`` lines.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Final

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import (
    ManagedProcess,
    free_port,
    log_tail,
    poll_until,
)
from adapter.devstack.services.synapse import DEFAULT_READY_TIMEOUT_S, SynapseHomeserver

__all__ = [
    "EVENT_PERSISTERS",
    "SYNC_WORKER",
    "WORKERS",
    "ShardedSynapse",
]

logger = logging.getLogger(__name__)

EVENT_PERSISTERS: Final = ("persister1", "persister2")
"""The ``worker_name`` (and instance name) of each event persister."""

SYNC_WORKER: Final = "sync1"
"""The ``worker_name`` of the generic worker that serves ``/sync``."""

WORKERS: Final = (*EVENT_PERSISTERS, SYNC_WORKER)
"""Every worker, in start order."""

_HOST = "127.0.0.1"
_UNLIMITED = {"per_second": 10000, "burst_count": 10000}
_STOP_TIMEOUT_S = 15.0


class ShardedSynapse(SynapseHomeserver):
    """Synapse ``main`` + two event persisters + a ``/sync`` worker on PostgreSQL.

    Args:
        redis_url: ``redis://host:port[/db]`` of the Redis to replicate over.
        database_dsn: a PostgreSQL DSN of an empty UTF8 database with C collation.
            Required: the processes share the database, which SQLite cannot do.
        server_name: the Matrix server name (the Redis channel); ``None`` picks a
            unique one.
        run_dir: folder for configuration, media and logs; ``None`` makes a
            temporary one that :meth:`close` removes.
        python: the interpreter that runs Synapse (default: ours).
        ready_timeout_s: how long a start may take until every process is ready.

    Raises:
        ServiceError: Synapse, its Redis client or psycopg2 is not importable by
            ``python``; the message says how to install them.
    """

    name = "synapse"

    def __init__(
        self,
        redis_url: str,
        *,
        database_dsn: str,
        server_name: str | None = None,
        run_dir: Path | None = None,
        python: str = sys.executable,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        super().__init__(
            redis_url,
            database_dsn=database_dsn,
            with_worker=False,
            server_name=server_name,
            run_dir=run_dir,
            python=python,
            ready_timeout_s=ready_timeout_s,
        )
        taken = [self.port, self.replication_port]
        self.worker_replication_ports: dict[str, int] = {}
        """Each worker's ``replication`` listener port (its ``instance_map`` entry)."""
        for worker in WORKERS:
            port = free_port(exclude=taken)
            taken.append(port)
            self.worker_replication_ports[worker] = port
        self.sync_port = free_port(exclude=taken)
        self._workers: dict[str, ManagedProcess] = {}
        self.worker_ready_times: dict[str, float] = {}
        """Seconds from each worker's last launch until it was ready."""

    # -- addresses -------------------------------------------------------------------

    @property
    def worker_client_url(self) -> str:
        """Base URL of ``sync1``'s client API, where ``/sync`` goes."""
        return f"http://{_HOST}:{self.sync_port}"

    @property
    def replication_url(self) -> str:
        """Base URL of the main process's HTTP replication listener."""
        return f"http://{_HOST}:{self.replication_port}"

    def worker_config_file(self, worker: str) -> Path:
        """The worker's own configuration file (its second ``-c``)."""
        return self.run_dir / f"{self._known(worker)}.yaml"

    def worker_log(self, worker: str) -> Path:
        """The worker's console log (all its runs appended)."""
        return self.run_dir / f"{self._known(worker)}.log"

    def worker_log_lines(self, worker: str, lines: int = 40) -> str:
        """The last lines of the worker's log, for error messages."""
        return log_tail(self.worker_log(worker), lines)

    def worker_process_id(self, worker: str) -> int | None:
        """The worker's process id while it runs."""
        process = self._workers.get(self._known(worker))
        return process.pid if process is not None and process.running() else None

    def _worker_health_url(self, worker: str) -> str:
        # Every HTTP listener of a worker serves /health; the replication one exists
        # on all of ours.
        return f"http://{_HOST}:{self.worker_replication_ports[worker]}"

    @staticmethod
    def _known(worker: str) -> str:
        if worker not in WORKERS:
            raise ValueError(f"no worker {worker!r}; the workers are {WORKERS}")
        return worker

    # -- configuration ---------------------------------------------------------------

    def _main_config(self) -> dict[str, Any]:
        config = super()._main_config()
        config["listeners"].append(
            {
                "port": self.replication_port,
                "bind_addresses": [_HOST],
                "type": "http",
                "tls": False,
                "resources": [{"names": ["replication"]}],
            }
        )
        # Processes send writes to a stream's writer over HTTP replication, so the
        # writers (and main, which workers always ask) must be reachable by name.
        instance_map = {"main": {"host": _HOST, "port": self.replication_port}}
        for worker, port in self.worker_replication_ports.items():
            instance_map[worker] = {"host": _HOST, "port": port}
        config["instance_map"] = instance_map
        config["stream_writers"] = {"events": list(EVENT_PERSISTERS)}
        # Scripted traffic makes a dozen rooms at once and joins each with several
        # users; the defaults (10 rooms, then one a minute) answer that with 429.
        config["rc_room_creation"] = _UNLIMITED
        config["rc_joins_per_room"] = _UNLIMITED
        return config

    def _sharded_worker_config(self, worker: str) -> dict[str, Any]:
        listeners: list[dict[str, Any]] = [
            {
                "type": "http",
                "port": self.worker_replication_ports[worker],
                "bind_addresses": [_HOST],
                "resources": [{"names": ["replication"]}],
            }
        ]
        if worker == SYNC_WORKER:
            listeners.append(
                {
                    "type": "http",
                    "port": self.sync_port,
                    "bind_addresses": [_HOST],
                    "resources": [{"names": ["client"]}],
                }
            )
        return {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": worker,
            "worker_listeners": listeners,
        }

    def write_config(self) -> None:
        """Write the shared configuration, one file per worker and the signing key."""
        super().write_config()
        for worker in WORKERS:
            self.worker_config_file(worker).write_text(
                json.dumps(self._sharded_worker_config(worker), indent=2) + "\n"
            )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start ``main`` and every worker at once; wait until all are ready.

        Raises:
            ServiceError: a process exited or was not ready within
                ``ready_timeout_s``; the message carries the tail of its log.
        """
        if self.running():
            return
        self.stop()  # a partly running set (one process died) starts over
        self.write_config()
        baseline = self.subscriber_count()
        try:
            self._launch_main(baseline + 1)
            # Workers refuse an empty database ("run the main synapse process to
            # prepare the database schema"), so they start once main is ready; all
            # of them at once, since they do not need each other.
            started = time.monotonic()
            for worker in WORKERS:
                self._spawn_worker(worker)
            self._wait_workers(WORKERS, baseline + 1 + len(WORKERS), started)
        except BaseException:
            self.stop()
            raise

    def _spawn_worker(self, worker: str) -> ManagedProcess:
        process = ManagedProcess(
            [
                self.python,
                "-m",
                "synapse.app.generic_worker",
                "--config-path",
                str(self.config_path),
                "--config-path",
                str(self.worker_config_file(worker)),
            ],
            log_path=self.worker_log(worker),
            name=f"synapse {worker}",
            cwd=self.run_dir,
        )
        self._workers[worker] = process
        return process

    def _wait_workers(
        self, workers: tuple[str, ...], subscribers: int, started: float
    ) -> None:
        """Poll until ``workers`` answer ``/health`` and the channel has ``subscribers``."""
        pending = set(workers)

        def check() -> bool | None:
            for worker in sorted(pending):
                process = self._workers[worker]
                code = process.returncode
                if code is not None:
                    raise ServiceError(
                        f"synapse {worker} exited with {code} during startup; last "
                        f"lines of {self.worker_log(worker)}:\n"
                        f"{self.worker_log_lines(worker)}"
                    )
                if self._health_ok(self._worker_health_url(worker)):
                    pending.discard(worker)
                    self.worker_ready_times[worker] = time.monotonic() - started
            if pending:
                return None
            return True if self.subscriber_count() >= subscribers else None

        try:
            poll_until(
                check,
                timeout_s=self.ready_timeout_s,
                what=f"synapse workers {', '.join(workers)} ready",
            )
        except TimeoutError as exc:
            tails = "\n".join(
                f"--- {worker}:\n{self.worker_log_lines(worker, 15)}"
                for worker in workers
            )
            raise ServiceError(f"{exc}; last lines of their logs:\n{tails}") from exc
        for worker in workers:
            logger.info(
                "synapse %s ready in %.1f s (pid %d)",
                worker,
                self.worker_ready_times[worker],
                self._workers[worker].pid,
            )

    def start_worker(self, worker: str) -> None:
        """Start one stopped worker and wait until it is ready.

        Raises:
            ServiceError: it exited or was not ready within ``ready_timeout_s``.
        """
        self._known(worker)
        if self.worker_process_id(worker) is not None:
            return
        baseline = self.subscriber_count()
        started = time.monotonic()
        self._spawn_worker(worker)
        try:
            self._wait_workers((worker,), baseline + 1, started)
        except BaseException:
            self.kill_worker(worker)
            raise

    def kill_worker(self, worker: str) -> None:
        """SIGKILL one worker at once, as a crash would; the others keep running."""
        process = self._workers.pop(self._known(worker), None)
        if process is not None:
            process.kill()

    def stop_worker(
        self, worker: str, timeout_s: float = _STOP_TIMEOUT_S
    ) -> int | None:
        """SIGTERM one worker (SIGKILL after ``timeout_s``); return its exit code."""
        process = self._workers.pop(self._known(worker), None)
        if process is None:
            return None
        code = process.stop(timeout_s)
        if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            logger.warning("synapse %s exited with %d on stop", worker, code)
        return code

    def restart_worker(self, worker: str, *, kill: bool = False) -> None:
        """Stop (or with ``kill``, SIGKILL) one worker and start it again."""
        if kill:
            self.kill_worker(worker)
        else:
            self.stop_worker(worker)
        self.start_worker(worker)

    def running(self) -> bool:
        """Return whether ``main`` and every worker run."""
        return super().running() and all(
            self.worker_process_id(worker) is not None for worker in WORKERS
        )

    def stop(self, timeout_s: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM the workers, then ``main``; SIGKILL any after ``timeout_s``."""
        for worker in list(self._workers):
            self.stop_worker(worker, timeout_s)
        super().stop(timeout_s)

    def kill(self) -> None:
        """SIGKILL every process at once (the database is kept)."""
        for worker in list(self._workers):
            self.kill_worker(worker)
        super().kill()
