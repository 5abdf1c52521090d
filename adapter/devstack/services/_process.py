"""Child-process plumbing shared by the local services.

Rule: no service process may outlive the Python process that started it. Three
layers enforce that:

1. Every child is started with a Linux parent-death signal (``prctl(PR_SET_PDEATHSIG,
   SIGKILL)`` in ``preexec_fn``). The kernel kills the child when the *thread* that
   forked it dies, which covers ``kill -9`` of pytest. Start services from the main
   thread, or from a thread that lives as long as the services do.
2. A :func:`weakref.finalize` per child terminates it when its owner is garbage
   collected and at interpreter exit (finalizers run from ``atexit``).
3. Children run in their own session, so a Ctrl-C in the terminal reaches only
   Python, which then stops the services in order instead of all at once.

This module also owns the small helpers every service needs: free ports on
127.0.0.1, the cache folder, polling with a deadline and reading a log's tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, Self, TypeVar

from adapter.core.errors import ServiceError

__all__ = [
    "DEFAULT_STOP_TIMEOUT_S",
    "ManagedProcess",
    "ManagedService",
    "cache_root",
    "free_port",
    "is_alive",
    "log_tail",
    "poll_until",
    "port_open",
    "rss_bytes",
    "run_command",
]

logger = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT_S = 30.0
"""How long a child gets to exit after its stop signal before SIGKILL."""

_PR_SET_PDEATHSIG = 1
_T = TypeVar("_T")


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - every Linux libc has prctl
        return None


_LIBC = _load_libc()


def _set_parent_death_signal() -> None:
    """Run in the forked child before exec: die with SIGKILL when the parent dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def cache_root() -> Path:
    """Return synkafka's cache folder: ``$XDG_CACHE_HOME/synkafka`` or ``~/.cache/synkafka``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "synkafka"


def free_port(exclude: Sequence[int] = ()) -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel picks it; there is a small window in which someone else may take it,
    which is acceptable for a test harness.

    Args:
        exclude: ports already promised to the caller's other listeners.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in exclude:
            return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a TCP connect to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def poll_until(
    check: Callable[[], _T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    what: str,
) -> _T:
    """Call ``check`` until it returns something other than ``None``.

    Args:
        check: returns ``None`` for "not yet"; may raise to abort early.
        timeout_s: the deadline, counted from the first call.
        interval_s: pause between calls.
        what: names the awaited condition in the timeout message.

    Returns:
        The first non-``None`` value ``check`` returned.

    Raises:
        TimeoutError: the deadline passed.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(interval_s)


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file, or a note if it is unreadable."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(data.splitlines()[-lines:])


def run_command(
    argv: Sequence[str],
    *,
    timeout_s: float,
    on_timeout: str,
    cwd: Path | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a setup command to its end: no stdin, output captured, any exit code.

    Args:
        argv: the command.
        timeout_s: how long it may take.
        on_timeout: the error message when it takes longer.
        cwd: its working folder.
        user: the OS user to run it as (``None``: this one).

    Raises:
        ServiceError: it did not finish within ``timeout_s``.
    """
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=cwd,
            user=user,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(on_timeout) from exc


def is_alive(pid: int) -> bool:
    """Return whether ``pid`` runs and is not a zombie (``kill -0`` says yes to zombies)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may hold spaces.
    return stat.rpartition(")")[2].split()[0] not in {"Z", "X"}


def rss_bytes(pid: int) -> int:
    """Return the resident set size of ``pid`` in bytes, or 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _terminate(
    popen: subprocess.Popen[bytes], stop_signal: int, timeout_s: float
) -> int:
    """Send ``stop_signal``, wait up to ``timeout_s``, then SIGKILL; return the exit code."""
    if popen.poll() is not None:
        return popen.returncode
    with contextlib.suppress(ProcessLookupError):
        popen.send_signal(stop_signal)
    try:
        return popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning(
            "pid %d ignored signal %d for %.0f s; sending SIGKILL",
            popen.pid,
            stop_signal,
            timeout_s,
        )
        with contextlib.suppress(ProcessLookupError):
            popen.kill()
        return popen.wait()


class ManagedProcess:
    """A service child process that cannot outlive us.

    Wraps :class:`subprocess.Popen` with the parent-death signal, a new session,
    output appended to ``log_path`` and a finalizer that stops the child at
    interpreter exit or when this object is collected.

    Args:
        argv: the command line.
        log_path: stdout and stderr are appended here.
        name: short label for log messages ("kafka", "redis", ...).
        stop_signal: the signal that asks the service to shut down cleanly.
        env: extra environment variables.
        cwd: working directory.
        user: run as this OS user (needs root); ``None`` keeps ours.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        name: str,
        stop_signal: int = signal.SIGTERM,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._stop_signal = stop_signal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log:
            self._popen = self._spawn(argv, log, full_env, cwd, user)
        self._finalizer = weakref.finalize(
            self, _terminate, self._popen, stop_signal, DEFAULT_STOP_TIMEOUT_S
        )
        logger.debug("started %s pid %d: %s", name, self._popen.pid, " ".join(argv))

    @staticmethod
    def _spawn(
        argv: Sequence[str],
        log: IO[bytes],
        env: Mapping[str, str],
        cwd: Path | None,
        user: str | None,
    ) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=cwd,
                user=user,
                start_new_session=True,
                # prctl is async-signal-safe; preexec_fn runs after the uid switch,
                # which matters because a credential change clears the setting.
                preexec_fn=_set_parent_death_signal,
            )
        except OSError as exc:
            raise ServiceError(f"cannot start {argv[0]}: {exc.strerror}") from exc

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or ``None`` while the child runs."""
        return self._popen.poll()

    def running(self) -> bool:
        """Return whether the child is still running."""
        return self._popen.poll() is None

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int:
        """Ask the child to exit, SIGKILL it after ``timeout_s``; return its exit code."""
        self._finalizer.detach()
        code = _terminate(self._popen, self._stop_signal, timeout_s)
        logger.debug("%s pid %d exited with %d", self.name, self._popen.pid, code)
        return code

    def kill(self) -> int:
        """SIGKILL the child at once (for crash tests); return its exit code."""
        self._finalizer.detach()
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()
        return self._popen.wait()

    def rss_bytes(self) -> int:
        """Resident memory of the child itself (not of its children), in bytes."""
        return rss_bytes(self._popen.pid)


class ManagedService:
    """Shared lifecycle of the local services: one child process, one run folder.

    Subclasses build the command line and answer :meth:`_probe`; this class starts the
    child, polls the probe with a deadline, and stops, kills, restarts and cleans up.

    Args:
        run_dir: the service's folder. ``None`` makes a temporary one that
            :meth:`close` (or interpreter exit) removes.
        ready_timeout_s: how long :meth:`start` waits for :meth:`_probe`.
    """

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(self, *, run_dir: Path | None, ready_timeout_s: float) -> None:
        self._owns_run_dir = run_dir is None
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix=f"synkafka-{self.name}-"))
            # Removes the folder at interpreter exit even if close() is never called.
            weakref.finalize(self, shutil.rmtree, run_dir, ignore_errors=True)
        self.run_dir = run_dir
        self.ready_timeout_s = ready_timeout_s
        self.ready_s: float | None = None
        """Seconds from the last launch until the service answered."""
        self._process: ManagedProcess | None = None

    # -- to be provided by subclasses ---------------------------------------------

    @property
    def log_path(self) -> Path:
        """The service's console log (all runs appended)."""
        return self.run_dir / f"{self.name}.log"

    def address(self) -> str:
        """Where clients connect, for messages."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the service and wait until it answers."""
        raise NotImplementedError

    def _probe(self) -> bool:
        """Return whether the service answers clients yet (called until true)."""
        raise NotImplementedError

    # -- shared behaviour ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        if self._process is None or not self._process.running():
            return None
        return self._process.pid

    def running(self) -> bool:
        """Return whether the child process is alive."""
        return self._process is not None and self._process.running()

    def rss_bytes(self) -> int:
        """The child's resident memory in bytes (0 when stopped)."""
        return self._process.rss_bytes() if self._process else 0

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the service log, for error messages."""
        return log_tail(self.log_path, lines)

    def _launch(
        self,
        argv: Sequence[str],
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``argv`` as the child and poll :meth:`_probe` until the deadline.

        Raises:
            ServiceError: the child exited or did not answer in time; the message
                carries the tail of the log.
        """
        started = time.monotonic()
        process = ManagedProcess(
            argv,
            log_path=self.log_path,
            name=self.name,
            stop_signal=self.stop_signal,
            env=env,
            cwd=self.run_dir,
            user=user,
        )
        self._process = process

        def check() -> bool | None:
            code = process.returncode
            if code is not None:
                raise ServiceError(
                    f"{self.name} exited with {code} during startup; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            return True if self._probe() else None

        try:
            poll_until(
                check,
                timeout_s=self.ready_timeout_s,
                what=f"{self.name} answering on {self.address()}",
            )
        except TimeoutError as exc:
            self.stop()
            raise ServiceError(
                f"{exc}; last lines of {self.log_path}:\n{self.log_tail()}"
            ) from exc
        except BaseException:
            self.stop()
            raise
        self.ready_s = time.monotonic() - started
        logger.info(
            "%s ready on %s in %.1f s (pid %d)",
            self.name,
            self.address(),
            self.ready_s,
            process.pid,
        )

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Send the stop signal, wait up to ``timeout_s``, then SIGKILL."""
        if self._process is None:
            return
        code = self._process.stop(timeout_s)
        self._process = None
        if code not in (0, -self.stop_signal, 128 + self.stop_signal):
            logger.warning("%s exited with %d on stop", self.name, code)

    def kill(self) -> None:
        """SIGKILL the service at once, as a crash would (its data is kept)."""
        if self._process is not None:
            self._process.kill()
            self._process = None

    def restart(self) -> None:
        """Stop and start again on the same port(s) and data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the service and remove the run folder if this object created it."""
        self.stop()
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"<{type(self).__name__} {self.address()} {state}>"
