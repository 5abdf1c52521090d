"""``--db`` DSNs: which forms are accepted, and how a refusal reads (no I/O)."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from adapter.cli.common import db_dsn
from adapter.core.config import Secret
from adapter.core.errors import ConfigError
from adapter.io.db.connection import Dsn, dsn_with_password, parse_dsn

SECRET = "hunter2-not-shown"  # noqa: S105 (a test value)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u@h:5432/d", Dsn("postgresql", "postgresql://u@h:5432/d")),
        ("postgres://u@h/d", Dsn("postgresql", "postgres://u@h/d")),
        (
            f"host=127.0.0.1 dbname=synapse password={SECRET}",
            Dsn("postgresql", f"host=127.0.0.1 dbname=synapse password={SECRET}"),
        ),
        ("dbname=synapse", Dsn("postgresql", "dbname=synapse")),
        ("sqlite:///var/lib/hs.db", Dsn("sqlite", "/var/lib/hs.db")),
        ("sqlite:////var/lib/hs.db", Dsn("sqlite", "/var/lib/hs.db")),
        ("sqlite://hs.db", Dsn("sqlite", "hs.db")),
        ("sqlite://:memory:", Dsn("sqlite", ":memory:")),
        (Path("/tmp/x.db"), Dsn("sqlite", "/tmp/x.db")),
    ],
)
def test_accepted_forms(dsn: str | Path, expected: Dsn) -> None:
    assert parse_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("/var/lib/synapse/homeserver.db", "not a database DSN: '/var/lib/synapse/"),
        ("homeserver.db", "not a database DSN: 'homeserver.db'"),
        ("", "not a database DSN: an empty string"),
        ("sqlite://", "sqlite:// needs a path"),
        (f"mysql://u:{SECRET}@h/d", "unsupported database URL scheme 'mysql'"),
        (f"host=h password={SECRET} oops", "not a valid libpq key=value string"),
        (f"hots=h password={SECRET}", "not a valid libpq key=value string"),
    ],
)
def test_anything_else_is_refused_without_showing_a_password(
    dsn: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_dsn(dsn)
    text = str(info.value)
    assert "\n" not in text
    assert SECRET not in text
    assert "oops" not in text  # libpq quotes the word after a password: not us
    assert "sqlite:///" in text  # every refusal says what would be accepted


def test_db_dsn_names_the_flag_and_adds_a_password_to_a_key_value_dsn(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"^--db: not a database DSN: 'x\.db'"):
        db_dsn("x.db", env={})
    password_file = tmp_path / "pw"
    password_file.write_text("it's a pass\n")
    dsn = db_dsn("host=db dbname=synapse", password_file, env={})
    assert conninfo_to_dict(dsn) == {
        "host": "db",
        "dbname": "synapse",
        "password": "it's a pass",
    }
    with pytest.raises(ConfigError, match="needs a PostgreSQL DSN"):
        dsn_with_password("sqlite:///x.db", Secret("p"))
