"""A real single-node Apache Kafka 4.x broker (KRaft, broker + controller) for tests.

There is no Kafka package in Debian or PyPI and no Docker here, so :func:`fetch_kafka`
collects the broker's jars with the machine's Maven into the user's cache folder once,
and :class:`KafkaBroker` runs ``kafka.Kafka`` from them with ``java``. Everything
binds to 127.0.0.1 on ports picked at construction, which stay the same across
restarts. The reasons behind each setting are next to it in the code.
"""

from __future__ import annotations

import base64
import fcntl
import functools
import hashlib
import importlib.resources
import logging
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from adapter.core.errors import ServiceError
from adapter.devstack.services._process import (
    ManagedService,
    cache_root,
    free_port,
    port_open,
    run_command,
)

__all__ = [
    "DEPENDENCY_PLUGIN_VERSION",
    "KAFKA_VERSION",
    "LOG4J_VERSION",
    "KafkaBroker",
    "KafkaInstall",
    "fetch_kafka",
    "jar_checksums",
    "kafka_home",
    "pinned_checksums",
    "verify_jars",
]

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
"""The pinned Apache Kafka release (``org.apache.kafka:kafka_2.13``)."""

LOG4J_VERSION = "2.25.4"
"""Log4j 2 as shipped in the 4.3.1 distribution (its ``libs/`` has the SLF4J 1.x binding)."""

SLF4J_VERSION = "1.7.36"

DEPENDENCY_PLUGIN_VERSION = "3.8.1"
"""``maven-dependency-plugin``, pinned because newer ones may need a newer Maven."""

DEFAULT_FETCH_TIMEOUT_S = 900.0
DEFAULT_READY_TIMEOUT_S = 60.0
_FORMAT_TIMEOUT_S = 120.0
_MARKER = ".complete"
_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin"

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.synkafka</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- The distribution adds these itself; no Kafka POM names the SLF4J binding. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2_TEMPLATE = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.out.ref = OUT
"""


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """Return the cache folder for one Kafka version (``<cache>/synkafka/kafka-<version>``)."""
    return cache_root() / f"kafka-{version}"


@dataclass(frozen=True, slots=True)
class KafkaInstall:
    """Where a Kafka version's jars are and how :func:`fetch_kafka` got them.

    Attributes:
        version: the Apache Kafka release.
        libs_dir: the folder of jars to put on the classpath.
        downloaded: ``True`` if this call ran Maven, ``False`` if the cache was complete.
        elapsed_s: how long the call took.
    """

    version: str
    libs_dir: Path
    downloaded: bool
    elapsed_s: float

    @property
    def classpath(self) -> str:
        """The ``-cp`` argument; the JVM expands the wildcard itself."""
        return str(self.libs_dir / "*")


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServiceError(f"{name} not found on PATH; {hint}")
    return path


@functools.cache
def _java() -> str:
    """Return the java executable after checking it is version 17 or newer."""
    java = _require_tool(
        "java",
        "Kafka 4.x needs Java 17 or newer: apt-get install -y openjdk-17-jre-headless",
    )
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=False
    )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise ServiceError(f"cannot read the Java version from `{java} -version`")
    major = int(match.group(1))
    if major == 1:  # "1.8.0_392" style
        major = int(match.group(2) or 0)
    if major < 17:
        raise ServiceError(
            f"{java} is Java {major}; Kafka 4.x needs 17 or newer: "
            "apt-get install -y openjdk-17-jre-headless"
        )
    return java


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock, so parallel test runs fetch only once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_libs(libs: Path, version: str) -> None:
    """Reject a jar set that cannot run the broker (the distribution's libs/ has exactly one SLF4J binding and one lz4)."""
    names = sorted(p.name for p in libs.glob("*.jar"))
    problems = []
    if f"kafka_2.13-{version}.jar" not in names:
        problems.append(f"kafka_2.13-{version}.jar is missing")
    if not any(n.startswith("log4j-slf4j-impl-") for n in names):
        problems.append("the SLF4J binding log4j-slf4j-impl is missing")
    if sum(n.startswith("lz4-java-") for n in names) > 1:
        problems.append("two lz4-java jars")
    if any(n.startswith("log4j-slf4j2-impl-") for n in names):
        problems.append("a second SLF4J binding (log4j-slf4j2-impl)")
    if problems:
        raise ServiceError(f"Kafka jars in {libs} are unusable: {'; '.join(problems)}")


def pinned_checksums(version: str = KAFKA_VERSION) -> dict[str, str]:
    """Return {jar file name: SHA-256 hex} pinned in the package for ``version``.

    Raises:
        ServiceError: no checksums are pinned for that version.
    """
    resource = importlib.resources.files(
        __package__ or "adapter.devstack.services"
    ).joinpath(f"kafka-{version}.sha256")
    if not resource.is_file():
        raise ServiceError(
            f"no pinned jar checksums for Kafka {version} (adapter/devstack/services/"
            f"kafka-{version}.sha256); add them with: python -m adapter.devstack.services "
            f"fetch-kafka --version {version} --write-checksums"
        )
    pinned: dict[str, str] = {}
    for line in resource.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            pinned[name] = digest
    return pinned


def jar_checksums(libs: Path) -> dict[str, str]:
    """Return {jar file name: SHA-256 hex} of the jars in ``libs``."""
    return {p.name: _sha256(p) for p in sorted(libs.glob("*.jar"))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_jars(libs: Path, pinned: Mapping[str, str]) -> None:
    """Check that ``libs`` holds exactly the pinned jars, each with its SHA-256.

    Raises:
        ServiceError: one line naming the first jar that differs, is missing or is
            not pinned.
    """
    present = {p.name: p for p in libs.glob("*.jar")}
    for name in sorted(pinned):
        path = present.get(name)
        if path is None:
            raise ServiceError(f"Kafka jar {name} is missing from {libs}")
        actual = _sha256(path)
        if actual != pinned[name]:
            raise ServiceError(
                f"Kafka jar {path} has SHA-256 {actual}, not the pinned "
                f"{pinned[name]}; it is not used"
            )
    strays = sorted(set(present) - set(pinned))
    if strays:
        raise ServiceError(
            f"Kafka jar {libs / strays[0]} is not pinned in kafka-<version>.sha256; "
            "it is not used"
        )


def _first_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if "[ERROR]" in ln:
            return re.sub(r"\x1b\[[0-9;]*m", "", ln).replace("[ERROR]", "").strip()
    return lines[-1] if lines else "no output"


def fetch_kafka(
    version: str = KAFKA_VERSION,
    *,
    timeout_s: float = DEFAULT_FETCH_TIMEOUT_S,
    pinned: Mapping[str, str] | None = None,
    verify: bool = True,
) -> KafkaInstall:
    """Make sure the jars of Kafka ``version`` are in the cache; download them if not.

    Writes ``pom.xml`` into :func:`kafka_home` and runs ``mvn copy-dependencies``
    (runtime scope) into ``libs/`` there. Maven runs with ``--strict-checksums``, so
    a download that does not match the SHA-1 the repository publishes fails; then
    every jar is checked against the SHA-256 pinned in the package
    (:func:`pinned_checksums`), on every call, cached or not. A jar that does not
    match is never used: the download or the cached folder is removed. A
    ``.complete`` marker is written only after the jars are in place and checked, so
    an interrupted download is redone from scratch next time. A file lock serialises
    concurrent callers.

    Args:
        version: the Apache Kafka release to fetch.
        timeout_s: give up on Maven after this long.
        pinned: {jar name: SHA-256}; the package's pinned list when omitted.
        verify: ``False`` only to pin a new version (``--write-checksums``): then
            Maven's SHA-1 check is the only one.

    Returns:
        Where the jars are and whether this call downloaded them.

    Raises:
        ServiceError: ``java`` or ``mvn`` is missing, the download failed, or a jar
            does not match its pinned checksum. The message is one line naming what
            is missing or which file differs, and how to get it.
    """
    started = time.monotonic()
    home = kafka_home(version)
    libs = home / "libs"
    expected: Mapping[str, str] | None = None
    if verify:
        expected = pinned_checksums(version) if pinned is None else pinned
    with _locked(home.with_name(home.name + ".lock")):
        if (home / _MARKER).is_file() and libs.is_dir():
            try:
                if expected is not None:
                    verify_jars(libs, expected)
            except ServiceError:
                # Never run from a changed cache; the next fetch starts again.
                (home / _MARKER).unlink(missing_ok=True)
                shutil.rmtree(libs, ignore_errors=True)
                raise
            _check_libs(libs, version)
            return KafkaInstall(version, libs, False, time.monotonic() - started)
        _java()
        mvn = _require_tool(
            "mvn", "Maven fetches the Kafka jars: apt-get install -y maven"
        )
        logger.info("fetching Apache Kafka %s jars into %s", version, libs)
        home.mkdir(parents=True, exist_ok=True)
        partial = home / "libs.partial"
        for stale in (libs, partial):
            shutil.rmtree(stale, ignore_errors=True)
        (home / "pom.xml").write_text(
            _POM.format(kafka=version, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION)
        )
        argv = [
            mvn,
            "-q",
            "-B",
            "--strict-checksums",
            "-f",
            str(home / "pom.xml"),
            f"{_PLUGIN}:{DEPENDENCY_PLUGIN_VERSION}:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        result = run_command(
            argv,
            timeout_s=timeout_s,
            on_timeout=(
                f"Maven did not fetch the Kafka {version} jars within {timeout_s:g} s; "
                "check network access to Maven Central (or the mirror in ~/.m2/settings.xml)"
            ),
            cwd=home,
        )
        if result.returncode != 0:
            reason = _first_error_line(result.stdout + "\n" + result.stderr)
            raise ServiceError(
                f"Maven could not fetch the Kafka {version} jars (exit {result.returncode}): "
                f"{reason}; check network access to Maven Central "
                "(or the mirror in ~/.m2/settings.xml)"
            )
        try:
            if expected is not None:
                verify_jars(partial, expected)
            _check_libs(partial, version)
        except ServiceError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(libs)
        (home / _MARKER).write_text(
            "\n".join(sorted(p.name for p in libs.glob("*.jar"))) + "\n"
        )
    elapsed = time.monotonic() - started
    logger.info("fetched Kafka %s jars in %.1f s", version, elapsed)
    return KafkaInstall(version, libs, True, elapsed)


def _random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding, not starting with '-'."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class KafkaBroker(ManagedService):
    """One Kafka 4.x process acting as KRaft broker and controller on 127.0.0.1.

    Ports are picked when the object is made and kept across :meth:`restart`, as is
    the data folder, so a restart looks like a broker bounce to clients. ``stop``
    sends SIGTERM (controlled shutdown) and SIGKILLs after 30 s.

    Example::

        with KafkaBroker() as broker:
            producer = Producer({"bootstrap.servers": broker.bootstrap_servers})

    Args:
        version: the Kafka release; its jars are fetched on first :meth:`start`.
        run_dir: folder for config, data and logs. ``None`` makes a temporary one that
            :meth:`close` removes.
        extra_properties: ``server.properties`` entries added or overriding ours,
            written verbatim.
        extra_listeners: more listeners as ``{name: security_protocol}`` (for example
            ``{"SASL_SSL": "SASL_SSL"}``); each gets its own port, see
            :meth:`listener_port`.
        format_args: extra ``StorageTool format`` arguments (such as ``--add-scram``).
        heap_mb: the JVM's maximum heap.
        ready_timeout_s: how long :meth:`start` waits for the broker to answer.
    """

    name = "kafka"

    def __init__(
        self,
        *,
        version: str = KAFKA_VERSION,
        run_dir: Path | None = None,
        extra_properties: Mapping[str, str] | None = None,
        extra_listeners: Mapping[str, str] | None = None,
        format_args: Sequence[str] = (),
        heap_mb: int = 512,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        super().__init__(run_dir=run_dir, ready_timeout_s=ready_timeout_s)
        self.version = version
        self._extra_properties = dict(extra_properties or {})
        self._extra_listeners = dict(extra_listeners or {})
        self._format_args = list(format_args)
        self._heap_mb = heap_mb
        self._ports: dict[str, int] = {}
        for listener in ["PLAINTEXT", "CONTROLLER", *self._extra_listeners]:
            self._ports[listener] = free_port(exclude=list(self._ports.values()))
        self.format_s: float | None = None
        """Seconds the storage format took, if this object formatted the data folder."""

    # -- addresses ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The PLAINTEXT client port."""
        return self._ports["PLAINTEXT"]

    @property
    def controller_port(self) -> int:
        """The KRaft controller port (clients never use it)."""
        return self._ports["CONTROLLER"]

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>`` of the PLAINTEXT listener, for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    def listener_port(self, listener: str) -> int:
        """Return the port of a listener by name (``PLAINTEXT`` or an extra one)."""
        return self._ports[listener]

    def address(self) -> str:
        """The bootstrap servers."""
        return self.bootstrap_servers

    @property
    def data_dir(self) -> Path:
        """The ``log.dirs`` folder, kept across restarts."""
        return self.run_dir / "data"

    @property
    def log_path(self) -> Path:
        """The broker's console log (all runs appended)."""
        return self.run_dir / "logs" / "broker.log"

    # -- configuration -------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """Return the ``server.properties`` entries this broker runs with."""
        listeners = ",".join(
            f"{name}://127.0.0.1:{port}" for name, port in self._ports.items()
        )
        protocols = {"PLAINTEXT": "PLAINTEXT", "CONTROLLER": "PLAINTEXT"}
        protocols.update(self._extra_listeners)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": listeners,
            "advertised.listeners": listeners,
            "listener.security.protocol.map": ",".join(
                f"{k}:{v}" for k, v in protocols.items()
            ),
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Internal topics default to replication factor 3: impossible on one node.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Short cleaner/retention intervals so compaction is observable in tests;
            # the dedupe buffer lives on the heap (default 128 MiB).
            "log.retention.check.interval.ms": "1000",
            "log.cleaner.backoff.ms": "200",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "log.segment.delete.delay.ms": "1000",
            "log.initial.task.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
        }
        props.update(self._extra_properties)
        return props

    def _write_config(self) -> Path:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        for name, level in (
            ("log4j2.properties", "INFO"),
            ("tools-log4j2.properties", "WARN"),
        ):
            (self.run_dir / name).write_text(_LOG4J2_TEMPLATE.format(level=level))
        path = self.run_dir / "server.properties"
        path.write_text(
            "".join(f"{k}={v}\n" for k, v in self.server_properties().items())
        )
        return path

    def _format(self, java: str, install: KafkaInstall, config: Path) -> None:
        """Run ``StorageTool format --standalone`` on a fresh data folder."""
        argv = [
            java,
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Dlog4j2.configurationFile={self.run_dir / 'tools-log4j2.properties'}",
            "-cp",
            install.classpath,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "--cluster-id",
            _random_cluster_id(),
            "--config",
            str(config),
            *self._format_args,
        ]
        started = time.monotonic()
        result = run_command(
            argv,
            timeout_s=_FORMAT_TIMEOUT_S,
            on_timeout=f"Kafka storage format did not finish within {_FORMAT_TIMEOUT_S:g} s",
        )
        output = (result.stdout + result.stderr).strip()
        (self.run_dir / "logs" / "format.log").write_text(output + "\n")
        if result.returncode != 0:
            raise ServiceError(
                f"Kafka storage format failed (exit {result.returncode}):\n"
                f"{output[-4000:]}"
            )
        self.format_s = time.monotonic() - started
        logger.info("formatted Kafka storage in %.1f s", self.format_s)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Fetch jars if needed, format on first use, launch the JVM and wait until ready.

        Ready means the broker answered a metadata request with itself in it.

        Raises:
            ServiceError: java/mvn missing, the format failed, the JVM exited, or the
                broker did not answer within ``ready_timeout_s`` (the message carries the
                tail of the broker log).
        """
        if self.running():
            return
        install = fetch_kafka(self.version)
        java = _java()
        config = self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            self._format(java, install, config)
        self._launch(
            [
                java,
                "-Xms128m",
                f"-Xmx{self._heap_mb}m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.run_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.run_dir / 'logs'}",
                "-cp",
                install.classpath,
                "kafka.Kafka",
                str(config),
            ]
        )

    def _probe(self) -> bool:
        # The PLAINTEXT socket opens only once the broker is caught up and unfenced, so
        # connect first (cheap) and only then ask for metadata.
        if not port_open(self.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        try:
            metadata = admin.list_topics(timeout=5)
        except KafkaException:
            return False
        return bool(metadata.brokers)
