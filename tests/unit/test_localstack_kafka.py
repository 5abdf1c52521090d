"""Pure parts of adapter.devstack.services: cache layout, jar checks, ids, polling."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from adapter.core.errors import ServiceError
from adapter.devstack.services import kafka as kafka_mod
from adapter.devstack.services._process import cache_root, log_tail, poll_until

VERSION = kafka_mod.KAFKA_VERSION
GOOD_JARS = [
    f"kafka_2.13-{VERSION}.jar",
    f"kafka-clients-{VERSION}.jar",
    "log4j-slf4j-impl-2.25.4.jar",
    "lz4-java-1.10.2.jar",
]


EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_PINNED = dict.fromkeys(GOOD_JARS, EMPTY_SHA256)


def _make_libs(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_cache_root_follows_xdg_cache_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "synkafka"
    assert kafka_mod.kafka_home() == tmp_path / "synkafka" / f"kafka-{VERSION}"


def test_cache_root_defaults_to_home_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "synkafka"


def test_fetch_reuses_a_complete_cache_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    home = kafka_mod.kafka_home()
    _make_libs(home / "libs", GOOD_JARS)
    (home / ".complete").write_text("done\n")
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    install = kafka_mod.fetch_kafka(pinned=EMPTY_PINNED)

    assert (install.downloaded, install.libs_dir) == (False, home / "libs")
    assert install.classpath == str(home / "libs" / "*")


def test_fetch_without_marker_needs_maven_and_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _make_libs(kafka_mod.kafka_home() / "libs", GOOD_JARS)  # partial: no marker
    monkeypatch.setattr(kafka_mod, "_java", lambda: "/usr/bin/java")
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    with pytest.raises(
        ServiceError, match=r"^mvn not found .*apt-get install -y maven$"
    ):
        kafka_mod.fetch_kafka()


@pytest.mark.parametrize(
    ("names", "problem"),
    [
        (GOOD_JARS[1:], "kafka_2.13"),
        ([n for n in GOOD_JARS if "slf4j" not in n], "SLF4J binding"),
        ([*GOOD_JARS, "lz4-java-1.8.0.jar"], "two lz4-java"),
        ([*GOOD_JARS, "log4j-slf4j2-impl-2.25.4.jar"], "second SLF4J binding"),
    ],
)
def test_unusable_jar_sets_are_rejected(
    tmp_path: Path, names: list[str], problem: str
) -> None:
    libs = _make_libs(tmp_path / "libs", names)
    with pytest.raises(ServiceError, match=problem):
        kafka_mod._check_libs(libs, VERSION)


def test_good_jar_set_passes(tmp_path: Path) -> None:
    kafka_mod._check_libs(_make_libs(tmp_path / "libs", GOOD_JARS), VERSION)


def test_maven_error_line_is_extracted_without_colour_codes() -> None:
    output = "noise\n\x1b[1;31m[ERROR]\x1b[m Failed to execute goal: not found\n[ERROR] more\n"
    assert kafka_mod._first_error_line(output) == "Failed to execute goal: not found"
    assert kafka_mod._first_error_line("") == "no output"


def test_cluster_ids_are_22_char_base64url_not_starting_with_dash() -> None:
    for _ in range(200):
        cluster_id = kafka_mod._random_cluster_id()
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_poll_until_returns_first_value_and_times_out() -> None:
    answers = iter([None, None, 7])
    assert poll_until(lambda: next(answers), timeout_s=5, interval_s=0, what="x") == 7
    with pytest.raises(TimeoutError, match=r"never did not happen within 0\.05 s"):
        poll_until(lambda: None, timeout_s=0.05, interval_s=0.01, what="never")


def test_log_tail_returns_last_lines_or_a_note(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 2) == "line 98\nline 99"
    assert log_tail(tmp_path / "missing.log").startswith("(no log at ")


def test_a_cached_jar_that_differs_from_its_pin_is_named_and_not_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    home = kafka_mod.kafka_home()
    libs = _make_libs(home / "libs", GOOD_JARS)
    (libs / f"kafka-clients-{VERSION}.jar").write_bytes(b"tampered")
    (home / ".complete").write_text("done\n")

    with pytest.raises(ServiceError) as raised:
        kafka_mod.fetch_kafka(pinned=EMPTY_PINNED)

    message = str(raised.value)
    assert "\n" not in message
    assert f"kafka-clients-{VERSION}.jar has SHA-256 " in message
    assert message.endswith("it is not used")
    assert not libs.exists()
    assert not (home / ".complete").exists()


def test_verify_jars_names_a_missing_and_an_unpinned_jar(tmp_path: Path) -> None:
    libs = _make_libs(tmp_path / "libs", GOOD_JARS[1:])
    with pytest.raises(ServiceError, match=rf"jar {GOOD_JARS[0]} is missing"):
        kafka_mod.verify_jars(libs, EMPTY_PINNED)
    (libs / GOOD_JARS[0]).write_bytes(b"")
    (libs / "extra-1.0.jar").write_bytes(b"")
    with pytest.raises(ServiceError, match=r"extra-1\.0\.jar is not pinned"):
        kafka_mod.verify_jars(libs, EMPTY_PINNED)
    (libs / "extra-1.0.jar").unlink()
    kafka_mod.verify_jars(libs, EMPTY_PINNED)


def test_the_pinned_checksums_cover_the_broker_jars() -> None:
    pinned = kafka_mod.pinned_checksums()
    assert f"kafka_2.13-{VERSION}.jar" in pinned
    assert any(name.startswith("log4j-slf4j-impl-") for name in pinned)
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in pinned.values())
    with pytest.raises(ServiceError, match=r"no pinned jar checksums for Kafka 0\.0"):
        kafka_mod.pinned_checksums("0.0")
