"""A real Prometheus scrapes a synkafka health server and evaluates our PromQL.

Debian's ``prometheus`` binary runs on 127.0.0.1 with a 1 s scrape interval and
deploy/prometheus/alerts.yml as its rule file. It scrapes one target under each job
name of deploy/prometheus/prometheus.yml (consumer, bridge, feed). Every PromQL expression of the Grafana
dashboards (Grafana variables replaced by concrete values) and of the alert rules
must return at least one series, and every alert must fire on a process in trouble.

The target is the ``scrape_target`` fixture: today a health server over a registry in
which every synkafka metric has series and keeps moving (a stand-in for a troubled
process: lag growing, a stream behind, failures counted). To scrape a real consumer
instead, replace that fixture with one that starts ``synkafka consume --metrics-port``
and yields its ``host:port``; the tests below do not change. Expressions on
kafka-exporter metrics are exempt (no exporter runs here) and listed explicitly.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, TypeVar

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from adapter.core.config import KafkaSettings
from adapter.core.rows import row_from_wire
from adapter.io.kafka.producer import Producer
from adapter.io.metrics import Metrics
from adapter.runtime.health import Check, HealthServer
from adapter.runtime.publisher import Publisher
from tests.integration.harness import ensure_topics, json_lines

REPO = Path(__file__).resolve().parents[2]
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
JOBS = ("synkafka-consumer", "synkafka-bridge", "synkafka-feed")
DEADLINE_S = 30.0

# Expressions on kafka-exporter metrics: valid (test_deploy.py checks the names) but
# without data here. Panel titles and alert names, so a new one is a conscious choice.
EXPORTER_ONLY = frozenset(
    {
        "synkafka-consumer: Broker-side consumer-group lag (kafka-exporter)",
        "synkafka-bridge: Topic write rate (kafka-exporter)",
        "synkafka-feed: Feed behind the events topic (kafka-exporter)",
        "synkafka-feed: Readers behind the feed (kafka-exporter)",
        "synkafka-feed: Feed topic write rate (kafka-exporter)",
        "alert SynkafkaBrokerConsumerGroupLag",
    }
)
# Alerts the troubled target cannot trigger: it is being scraped, so it is up.
CANNOT_FIRE_HERE = frozenset({"SynkafkaTargetDown"})

# Grafana's variables, as a user who picked "All" and the last hour would have them.
GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__interval": "1s",
    "$__range": "1m",
    "$job": ".+",
    "$instance": ".+",
    "$stream": ".+",
}
_ALERT_SIGNAL = re.compile(r"^(?P<signal>.+?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+$", re.S)

T = TypeVar("T")


def _poll(
    what: str, probe: Callable[[], T | None], deadline_s: float = DEADLINE_S
) -> T:
    """Call ``probe`` until it returns a value other than None, or fail."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.2)


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


# The scrape target: every synkafka metric with series, moving like a troubled process.

# Two realistic label sets; the second one is the "bad" one (behind, failing).
_LABELS: tuple[dict[str, str], dict[str, str]] = (
    {
        "command": "RDATA",
        "stream": "events",
        "writer": "master",
        "topic": "synapse.synkafka.test.stream.events",
        "partition": "0",
        "source": "kafka",
        "reason": "duplicate",
        "outcome": "done",
        "component": "kafka",
        "kind": "snapshot",
    },
    {
        "command": "POSITION",
        "stream": "typing",
        "writer": "worker1",
        "topic": "synapse.synkafka.test.stream.typing",
        "partition": "1",
        "source": "backfill",
        "reason": "handler_failed",
        "outcome": "failed",
        "component": "redis",
        "kind": "clear",
    },
)
# Labels whose values depend on the metric.
_OVERRIDES = {
    ("synkafka_bridge_gaps", "outcome"): ("repaired", "unrepaired"),
    ("synkafka_dead_letters", "reason"): ("decode_failed", "handler_failed"),
    ("synkafka_feed_events", "outcome"): ("published", "missing"),
    ("synkafka_feed_transactions", "outcome"): ("committed", "aborted"),
}
# Gauges with a meaning per label set: (first, second); others just move.
_GAUGES = {
    "synkafka_caught_up": (1.0, 0.0),
    "synkafka_bridge_redis_connected": (0.0, 0.0),
}


class _TroubledProcess:
    """Every synkafka metric with series; counters and lag grow on a ticker thread."""

    def __init__(self) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.metrics.build_info.info({"version": "0.1.0"})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = 0

    def children(self) -> Iterator[tuple[str, MetricWrapperBase]]:
        for wrapper in vars(self.metrics).values():
            if not isinstance(wrapper, MetricWrapperBase) or wrapper._type == "info":
                continue
            name = wrapper._name
            if not wrapper._labelnames:
                yield name, wrapper
                continue
            for i, labels in enumerate(_LABELS):
                values = {
                    label: _OVERRIDES.get((name, label), (labels[label],) * 2)[i]
                    for label in wrapper._labelnames
                }
                yield f"{name}#{i}", wrapper.labels(**values)

    def step(self) -> None:
        self._tick += 1
        for key, child in self.children():
            name, _, index = key.partition("#")
            kind = child._type
            if kind == "counter":
                child.inc(random.randint(1, 5))  # type: ignore[attr-defined]
            elif kind == "histogram":
                child.observe(random.uniform(0.0005, 0.2))  # type: ignore[attr-defined]
            elif name in _GAUGES:
                child.set(_GAUGES[name][int(index or 0)])  # type: ignore[attr-defined]
            elif name == "synkafka_last_record_timestamp_seconds":
                child.set(time.time())  # type: ignore[attr-defined]
            else:  # lag, positions, backlog, presence: all growing
                child.set(10 * self._tick + random.random())  # type: ignore[attr-defined]

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.step()

    def start(self) -> None:
        self.step()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def scrape_target() -> Iterator[str]:
    """``host:port`` of a synkafka ``/metrics`` endpoint with every metric present."""
    process = _TroubledProcess()
    process.start()
    registry = process.metrics.registry
    missing = [family.name for family in registry.collect() if not family.samples]
    assert not missing, f"the stand-in leaves these metrics empty: {missing}"
    server = HealthServer(
        registry,
        alive=lambda: Check(True),
        broker=lambda: Check(True),
        ready=lambda: {"events": True, "typing": False},
        port=0,
    )
    with server:
        yield f"{server.host}:{server.port}"
    process.stop()


LIVE_JOB = "synkafka-live-consumer"


@pytest.fixture(scope="module")
def live_consumer(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``host:port`` of a real ``synkafka consume`` process that handled 3 updates."""
    prefix = f"prom.{random.getrandbits(32):08x}"
    work = tmp_path_factory.mktemp("live-consumer")
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    publisher = Publisher(
        Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)), prefix
    )
    for token in (1, 2, 3):
        publisher.publish_rdata(
            "typing",
            "master",
            token,
            [row_from_wire("typing", ["!r:test", ["@a:test"]])],
        )
    publisher.flush()
    port = _free_port()
    out = work / "rows.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter",
            "consume",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--prefix",
            prefix,
            "--instance-name",
            "prom",
            "--stream",
            "typing",
            "--from",
            "earliest",
            "--output",
            str(out),
            "--metrics-port",
            str(port),
            "--no-progress",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        _poll(
            "the live consumer's 3 updates",
            lambda: True if len(json_lines(out)) == 3 else None,
        )
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


# Prometheus.


class _Prometheus:
    def __init__(self, port: int) -> None:
        self.port = port

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path + query)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == 200, f"{path}{query}: {resp.status} {body[:300]!r}"
        return json.loads(body)["data"] if path.startswith("/api/") else body

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] in ("vector", "matrix"):
            return list(data["result"])
        return [data["result"]]  # scalar or string: one value


@pytest.fixture(scope="module")
def prometheus(
    scrape_target: str, live_consumer: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus not found: run dev/bootstrap-system (as root)"
    work = tmp_path_factory.mktemp("prometheus")
    config = {  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_YML)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [scrape_target]}]}
            for job in JOBS
        ]
        + [{"job_name": LIVE_JOB, "static_configs": [{"targets": [live_consumer]}]}],
    }
    (work / "prometheus.yml").write_text(json.dumps(config, indent=2))
    port = _free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = _Prometheus(port)

    def ready() -> bool | None:
        if proc.poll() is not None:
            pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()}")
        try:
            server.get("/-/ready")
        except (OSError, AssertionError):
            return None
        return True

    try:
        _poll("prometheus /-/ready", ready)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def scraped(prometheus: _Prometheus) -> _Prometheus:
    """Prometheus once every target is up and holds enough samples for rates."""

    def targets_up() -> bool | None:
        active = prometheus.get("/api/v1/targets")["activeTargets"]
        up = [t for t in active if t["health"] == "up"]
        return True if len(up) == len(JOBS) + 1 == len(active) else None

    _poll("both targets up", targets_up)

    def enough_samples() -> bool | None:
        result = prometheus.query("count_over_time(synkafka_build_info[1m])")
        return (
            True if result and min(float(r["value"][1]) for r in result) >= 5 else None
        )

    _poll("5 scrapes", enough_samples)
    return prometheus


def _substitute(expr: str) -> str:
    for variable, value in sorted(
        GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])
    ):
        expr = expr.replace(variable, value).replace("${" + variable[1:] + "}", value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def _dashboard_expressions() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{dashboard['uid']}: {panel['title']}", target["expr"]))
        for var in dashboard["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"]
                inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                assert inner, query
                out.append(
                    (f"{dashboard['uid']}: variable {var['name']}", inner.group(1))
                )
    return out


# The tests.


def test_every_synkafka_metric_reaches_prometheus(
    scraped: _Prometheus, scrape_target: str
) -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {"counter": ["_total"], "gauge": [""], "info": ["_info"]}
    expected = {
        family.name + suffix
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ["_bucket", "_sum", "_count"])
    }
    result = scraped.query('count by (__name__, job) ({__name__=~"synkafka_.+"})')
    for job in JOBS:
        got = {r["metric"]["__name__"] for r in result if r["metric"]["job"] == job}
        assert expected <= got, sorted(expected - got)


def test_every_dashboard_expression_returns_series(scraped: _Prometheus) -> None:
    expressions = _dashboard_expressions()
    assert len(expressions) > 40
    empty, exempt = [], set()
    for where, expr in expressions:
        if where in EXPORTER_ONLY:
            exempt.add(where)
            continue
        if not scraped.query(_substitute(expr)):
            empty.append(f"{where}: {expr}")
    assert not empty, "\n".join(empty)
    assert exempt == {w for w in EXPORTER_ONLY if not w.startswith("alert ")}


def _rules(prometheus: _Prometheus) -> list[dict[str, Any]]:
    groups = prometheus.get("/api/v1/rules", type="alert")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_alert_rule_is_healthy_and_its_signal_returns_series(
    scraped: _Prometheus,
) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        rules = _rules(scraped)
        done = all(
            r["health"] == "ok" and r["lastEvaluation"][:4] != "0001" for r in rules
        )
        return rules if rules and done else None

    rules = _poll("every rule evaluated once", evaluated)
    empty = []
    for rule in rules:
        if f"alert {rule['name']}" in EXPORTER_ONLY:
            continue
        signal = _ALERT_SIGNAL.match(rule["query"].strip())
        assert signal, rule["query"]
        if not scraped.query(signal.group("signal")):
            empty.append(f"{rule['name']}: {signal.group('signal')}")
    assert not empty, "\n".join(empty)


def test_every_alert_fires_on_a_troubled_process(scraped: _Prometheus) -> None:
    expected = {
        rule["name"]
        for rule in _rules(scraped)
        if rule["name"] not in CANNOT_FIRE_HERE
        and f"alert {rule['name']}" not in EXPORTER_ONLY
    }

    def all_active() -> set[str] | None:
        active = {
            rule["name"]
            for rule in _rules(scraped)
            if rule["state"] in ("pending", "firing")
        }
        return active if expected <= active else None

    active = _poll("every alert pending or firing", all_active)
    assert not active & CANNOT_FIRE_HERE


def test_a_real_consumer_is_scraped_with_its_progress(scraped: _Prometheus) -> None:
    job = f'job="{LIVE_JOB}"'
    applied = scraped.query(f"sum(synkafka_rows_applied_total{{{job}}})")
    assert applied
    assert float(applied[0]["value"][1]) == 3
    caught_up = scraped.query(f'synkafka_caught_up{{{job},stream="typing"}}')
    assert caught_up
    assert float(caught_up[0]["value"][1]) == 1
    position = scraped.query(
        f'synkafka_stream_position{{{job},stream="typing",writer="master"}}'
    )
    assert position
    assert float(position[0]["value"][1]) == 3
    ready = scraped.query(f"up{{{job}}}")
    assert ready
    assert float(ready[0]["value"][1]) == 1
