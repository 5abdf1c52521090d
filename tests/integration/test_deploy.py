"""The deployment files are valid and consistent, without a Docker engine.

* ``docker-compose config`` accepts docker-compose.yml (in a temp copy with the env
  files made from their examples);
* images are pinned, published ports are loopback-only and unique, every referenced
  file, volume and dependency exists, every service has a health check, no secret is
  inline;
* ``promtool check config`` and ``promtool check rules`` pass;
* the Grafana dashboards have the keys Grafana needs;
* every PromQL expression in the dashboards and alert rules uses only metrics that
  synkafka (adapter/io/metrics.py) or kafka-exporter export.

YAML is read by Debian's python3 with python3-yaml (installed with docker-compose by
dev/bootstrap-system), so the project needs no YAML dependency of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from adapter.io.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
SYSTEM_PYTHON = "/usr/bin/python3"

# What danielqsj/kafka-exporter exports (its README, "Metrics"); the dashboards and
# alerts may use these besides synkafka's own metrics.
KAFKA_EXPORTER_METRICS = frozenset(
    {
        "kafka_brokers",
        "kafka_broker_info",
        "kafka_topic_partitions",
        "kafka_topic_partition_current_offset",
        "kafka_topic_partition_oldest_offset",
        "kafka_topic_partition_in_sync_replica",
        "kafka_topic_partition_leader",
        "kafka_topic_partition_leader_is_preferred",
        "kafka_topic_partition_replicas",
        "kafka_topic_partition_under_replicated_partition",
        "kafka_consumergroup_current_offset",
        "kafka_consumergroup_current_offset_sum",
        "kafka_consumergroup_lag",
        "kafka_consumergroup_lag_sum",
        "kafka_consumergroupzookeeper_lag_zookeeper",
        "kafka_consumergroup_members",
    }
)
# Series Prometheus makes itself for every target.
PROMETHEUS_METRICS = frozenset({"up"})
SEVERITIES = frozenset({"info", "warning", "critical"})
# `<signal> <op> <number>`: test_prometheus.py evaluates the signal on its own.
ALERT_SHAPE = re.compile(r"^(?P<signal>.+?)\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9.]+$", re.S)
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan"}
)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file with the system python3's PyYAML."""
    code = "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", code, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def exported_synkafka_names() -> set[str]:
    """Every series name synkafka exports, from a fresh ``Metrics`` registry."""
    registry = CollectorRegistry()
    Metrics(registry)
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions or labels)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text
    )
    names = set()
    for m in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\()?", text):
        word, is_call = m.group(1), m.group(2)
        if not is_call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{dashboard['uid']}: {panel['title']}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = (
                var["query"]["query"]
                if isinstance(var["query"], dict)
                else var["query"]
            )
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert m, f"{dashboard['uid']}: variable {var['name']}: {query}"
            out.append((f"{dashboard['uid']}: variable {var['name']}", m.group(1)))
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(ALERTS_YML)["groups"] for rule in group["rules"]
    ]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def _require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} not found: run dev/bootstrap-system (as root) to install it"
    return path


# docker-compose.yml


def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    tool = _require("docker-compose")
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    for example in (tmp_path / "deploy" / "env").glob("*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    result = subprocess.run(
        [tool, "-f", "docker-compose.yml", "config", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_compose_has_the_designed_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "kafka",
        "postgres",
        "redis",
        "synapse",
        "synapse-worker1",
        "synkafka-bridge",
        "synkafka-consumer",
        "synkafka-feed",
        "kafka-exporter",
        "prometheus",
        "grafana",
    }


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, service in compose["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: {image} has no tag"
        assert "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} not pinned"
        if "build" in service:
            assert image == f"synkafka:{version}", name


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert check.get("test"), f"{name} has no health check"
        assert not check.get("disable"), name


def test_published_ports_are_loopback_and_unique(compose: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the short string form"
            parts = port.split(":")
            assert len(parts) == 3, f"{name}: {port}"
            assert parts[0] == "127.0.0.1", f"{name}: {port}"
            assert parts[1] not in seen, f"{name} and {seen.get(parts[1])}: {port}"
            seen[parts[1]] = name
    assert seen, "nothing is published"


def test_depends_on_targets_exist_with_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] == "service_healthy", f"{name} -> {target}"


def test_referenced_files_volumes_and_env_files_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source} missing"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            example = REPO / f"{env_file}.example"
            assert example.is_file(), f"{name}: {example} missing"
        if "build" in service:
            context = REPO / (
                service["build"]
                if isinstance(service["build"], str)
                else service["build"]["context"]
            )
            assert (context / "Dockerfile").is_file(), name
            assert (context / ".dockerignore").is_file(), name
    assert used == declared, f"declared but unused: {declared - used}"


def test_no_secrets_inline(compose: dict[str, Any]) -> None:
    secretish = re.compile(
        r"PASSWORD|SECRET|TOKEN|_KEY\b|DSN|DATABASE_URL|SYNKAFKA_DB\b", re.I
    )
    text = COMPOSE.read_text()
    for example in (REPO / "deploy" / "env").glob("*.env.example"):
        for line in example.read_text().splitlines():
            key, _, value = line.partition("=")
            if value and secretish.search(key):
                assert value not in text, f"{key}'s value appears in docker-compose.yml"
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form"
        for key in env:
            assert not secretish.search(key), f"{name}: {key} belongs in an env file"


def test_env_examples_agree_on_the_database_password() -> None:
    def read(name: str) -> dict[str, str]:
        lines = (
            (REPO / "deploy" / "env" / f"{name}.env.example").read_text().splitlines()
        )
        return dict(
            line.split("=", 1) for line in lines if line and not line.startswith("#")
        )

    password = read("postgres")["POSTGRES_PASSWORD"]
    assert read("synapse")["PGPASSWORD"] == password
    assert f":{password}@postgres:" in read("synkafka")["SYNKAFKA_DB"]


def test_synapse_config_enables_redis_and_the_worker(compose: dict[str, Any]) -> None:
    main = load_yaml(REPO / "deploy" / "synapse" / "homeserver.yaml")
    worker = load_yaml(REPO / "deploy" / "synapse" / "worker1.yaml")
    assert main["redis"] == {"enabled": True, "host": "redis", "port": 6379}
    assert main["instance_map"]["main"]["host"] == "synapse"
    replication_ports = [
        listener["port"]
        for listener in main["listeners"]
        if any("replication" in r["names"] for r in listener["resources"])
    ]
    assert replication_ports == [main["instance_map"]["main"]["port"]]
    assert worker["worker_app"] == "synapse.app.generic_worker"
    assert "password" not in main["database"]["args"]
    server_name = main["server_name"]
    for service in ("synkafka-bridge", "synkafka-consumer", "synkafka-feed"):
        command = compose["services"][service]["command"]
        assert command[command.index("--server-name") + 1] == server_name


# Prometheus


def test_promtool_check_config() -> None:
    promtool = _require("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = _require("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS_YML)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_targets_are_compose_services(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_YML)
    jobs = {}
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                jobs[job["job_name"]] = target
                host = target.rsplit(":", 1)[0]
                if host != "localhost":
                    assert host in compose["services"], target
    assert jobs["synkafka-bridge"] == "synkafka-bridge:9466"
    assert jobs["synkafka-consumer"] == "synkafka-consumer:9466"
    assert jobs["synkafka-feed"] == "synkafka-feed:9466"
    assert jobs["kafka-exporter"] == "kafka-exporter:9308"
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


def test_alert_rules_have_for_severity_and_text() -> None:
    rules = alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Synkafka[A-Z]\w+", name), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        assert ALERT_SHAPE.match(rule["expr"].strip()), f"{name}: {rule['expr']}"


# Grafana


def test_dashboards_have_the_grafana_keys() -> None:
    assert len(DASHBOARDS) >= 2
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for key in ("title", "uid", "panels", "schemaVersion", "templating", "time"):
            assert key in dashboard, f"{path.name}: {key}"
        assert isinstance(dashboard["schemaVersion"], int)
        assert dashboard["uid"] not in uids
        assert len(dashboard["uid"]) <= 40
        uids.add(dashboard["uid"])
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            where = f"{path.name}: {panel.get('title')}"
            assert panel["type"], where
            assert panel["title"], where
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, where
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            if panel["type"] == "row":
                continue
            assert panel["targets"], where
            assert panel["datasource"]["type"] == "prometheus", where
            assert panel.get("description"), where
            for target in panel["targets"]:
                assert target["refId"], where
                assert target["expr"].strip(), where


def test_grafana_provisioning_matches_compose(compose: dict[str, Any]) -> None:
    mounts = compose["services"]["grafana"]["volumes"]
    provider = load_yaml(
        REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "synkafka.yml"
    )["providers"][0]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    datasource = load_yaml(
        REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


# PromQL against the exported metric names


def test_metric_name_parser() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (stream, le) (rate(synkafka_handler_duration_"
        'seconds_bucket{job=~"$job", stream=~"a|b"}[$__rate_interval]))) > 0.5 '
        "and on (job) up == 1 or vector(0)"
    )
    assert metric_names(expr) == {"synkafka_handler_duration_seconds_bucket", "up"}


def test_every_expression_uses_exported_metrics() -> None:
    allowed = exported_synkafka_names() | KAFKA_EXPORTER_METRICS | PROMETHEUS_METRICS
    expressions = [
        where_expr
        for path in DASHBOARDS
        for where_expr in dashboard_expressions(json.loads(path.read_text()))
    ]
    expressions += [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]
    assert len(expressions) > 40
    unknown = {}
    for where, expr in expressions:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        if names - allowed:
            unknown[where] = sorted(names - allowed)
    assert not unknown, unknown


def test_every_synkafka_metric_is_on_a_dashboard() -> None:
    used = {
        name
        for path in DASHBOARDS
        for _, expr in dashboard_expressions(json.loads(path.read_text()))
        for name in metric_names(expr)
    }
    registry = CollectorRegistry()
    Metrics(registry)
    missing = {
        family.name
        for family in registry.collect()
        if not any(name.startswith(family.name) for name in used)
    }
    assert not missing, missing
