"""Access tokens never show: the consumer's log lines and its final error line."""

from __future__ import annotations

import os
import subprocess
import sys

from adapter.core.config import KafkaSettings
from adapter.core.rows import row_from_wire
from adapter.io.kafka.producer import Producer
from adapter.runtime.publisher import Publisher
from tests.integration.handlers import SECRET_TOKEN
from tests.integration.harness import ensure_topics


def test_a_handler_failure_quoting_a_token_is_masked_in_every_line(
    kafka_bootstrap: str, unique_name: str
) -> None:
    prefix = f"mask.{unique_name}"
    ensure_topics(kafka_bootstrap, prefix, ["typing"])
    publisher = Publisher(
        Producer(KafkaSettings(bootstrap_servers=kafka_bootstrap)), prefix
    )
    publisher.publish_rdata(
        "typing", "master", 1, [row_from_wire("typing", ["!r:test", []])]
    )
    publisher.flush()
    result = subprocess.run(
        [
            sys.executable, "-m", "adapter", "consume",
            "--bootstrap-servers", kafka_bootstrap, "--prefix", prefix,
            "--instance-name", "masking", "--stream", "typing", "--from", "earliest",
            "--handler", "tests.integration.handlers:fail_with_a_token",
            "--on-handler-error", "stop", "--metrics-port", "-1", "--log-level", "DEBUG",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "handler" in result.stderr
    assert "syt_***" in result.stderr  # the failure was logged, masked
    assert SECRET_TOKEN not in result.stderr
    assert SECRET_TOKEN not in result.stdout
