"""The real fetch (Maven) refuses a jar whose checksum is not the pinned one."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.core.errors import ServiceError
from adapter.devstack.services import kafka as kafka_mod


def test_a_fetched_jar_with_another_checksum_fails_the_fetch_and_is_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pinned = kafka_mod.pinned_checksums()
    victim = f"kafka-clients-{kafka_mod.KAFKA_VERSION}.jar"
    pinned[victim] = "0" * 64

    with pytest.raises(ServiceError) as raised:
        kafka_mod.fetch_kafka(pinned=pinned)

    message = str(raised.value)
    assert "\n" not in message
    assert victim in message
    assert "0" * 64 in message
    home = kafka_mod.kafka_home()
    assert not (home / "libs").exists()
    assert not (home / "libs.partial").exists()
    assert not (home / ".complete").exists()

    # With the true pins the same cache folder fetches and verifies.
    install = kafka_mod.fetch_kafka()
    assert install.downloaded
    kafka_mod.verify_jars(install.libs_dir, kafka_mod.pinned_checksums())
