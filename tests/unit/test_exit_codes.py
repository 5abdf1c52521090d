"""The exit-code scheme (usage and configuration errors 2, runtime failures 1) and
the one-line summary of a foreign exception."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adapter.cli.exit_codes import EXIT_CONFIG, EXIT_RUNTIME, exit_code_for
from adapter.core.errors import (
    AdapterError,
    BackfillError,
    ConfigError,
    DecodeError,
    DeliveryError,
    KafkaIOError,
    SchemaError,
    ServiceError,
    UnknownStreamError,
    exception_summary,
)


@pytest.mark.parametrize(
    "error",
    [ConfigError("x"), UnknownStreamError("x"), SchemaError("x")],
)
def test_configuration_errors_exit_2(error: AdapterError) -> None:
    assert exit_code_for(error) == EXIT_CONFIG == 2


@pytest.mark.parametrize(
    "error",
    [
        KafkaIOError("x", code="_TRANSPORT"),
        DeliveryError("x"),
        BackfillError("x"),
        ServiceError("x"),
        DecodeError("x"),
        AdapterError("x"),
    ],
)
def test_runtime_failures_exit_1(error: AdapterError) -> None:
    assert exit_code_for(error) == EXIT_RUNTIME == 1


def _synkafka(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_usage_error_and_a_config_error_share_code_2_with_one_line() -> None:
    # Neither needs a broker: both fail while the command line is read.
    usage = _synkafka("publish", "--no-such-flag")
    assert usage.returncode == EXIT_CONFIG
    assert "No such option" in usage.stderr
    assert "Traceback" not in usage.stderr
    bad_level = _synkafka("consume", "--log-level", "LOUD", "--metrics-port", "-1")
    assert bad_level.returncode == EXIT_CONFIG
    assert bad_level.stderr.strip() == "synkafka: error: unknown log level 'LOUD'"


def test_a_foreign_exception_is_summarised_on_one_line() -> None:
    assert exception_summary(RuntimeError("no room\n\tfor 1")) == (
        "RuntimeError: no room for 1"
    )
    assert exception_summary(KeyError()) == "KeyError"
