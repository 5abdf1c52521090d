"""The demo's settings and the constants every part of it shares.

:class:`DemoSettings` is everything the scenario takes from the outside (addresses,
sizes, timings); the constants name the simulated homeserver's writers, the consumer's
instance and the stream mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from adapter.cli.demo_sizes import DEFAULT_DURATION_S, DEFAULT_ROWS
from adapter.core import topics

__all__ = [
    "CONSUMER_NAME",
    "EVENT_WRITERS",
    "MAIN_WRITER",
    "MIX",
    "QUIET",
    "RESEND",
    "DemoSettings",
    "Key",
]

EVENT_WRITERS: Final = ("event_persister1", "event_persister2")
MAIN_WRITER: Final = "master"
CONSUMER_NAME: Final = "demo-consumer"
# ``events`` records the homeserver re-sends after the consumer's restart.
RESEND: Final = 25
# One slot per write, repeated: the stream mix (``caches`` only on PostgreSQL).
MIX: Final = (
    "events",
    "receipts",
    "events",
    "presence",
    "events",
    "account_data",
    "events",
    "receipts",
    "events",
    "to_device",
    "events",
    "device_lists",
    "events",
    "typing",
    "events",
    "push_rules",
    "receipts",
    "presence",
    "account_data",
    "caches",
)

# The demo's own Kafka clients: no log line for a closed connection (the broker stops
# at the end) or for the retries of a broker that has just started.
QUIET: Final = {"log.connection.close": "false", "log_level": "3"}

Key = tuple[str, str, int]
"""``(stream, writer, token)``."""


@dataclass(frozen=True, slots=True)
class DemoSettings:
    """Everything the scenario needs from the outside.

    Attributes:
        bootstrap: ``bootstrap.servers`` of the broker.
        dsn: Synapse's database (``sqlite:///...`` or ``postgresql://...``); empty,
            its tables are created here.
        run_dir: where the JSON lines and the children's logs go.
        python: the interpreter that runs ``python -m adapter`` children.
        rows: about how many rows to write after the history.
        duration_s: how long the writing takes (the homeserver paces itself).
        presence_expiry_s: the presence writer's expiry (Synapse's is 5 minutes).
        server_name: the simulated homeserver's name (topics: ``synapse.<name>``).
        resend: ``events`` records re-sent after the consumer's restart.
    """

    bootstrap: str
    dsn: str
    run_dir: Path
    python: str
    rows: int = DEFAULT_ROWS
    duration_s: float = DEFAULT_DURATION_S
    presence_expiry_s: float = 5.0
    server_name: str = "demo.local"
    resend: int = RESEND

    @property
    def prefix(self) -> str:
        """The topic prefix."""
        return topics.default_prefix(self.server_name)

    @property
    def engine(self) -> str:
        """``PostgreSQL`` or ``SQLite``, for humans."""
        return "PostgreSQL" if self.dsn.startswith("postgres") else "SQLite"

    @property
    def streams(self) -> tuple[str, ...]:
        """The streams the homeserver writes (``caches`` exists only on PostgreSQL)."""
        names = dict.fromkeys(MIX)
        if self.engine != "PostgreSQL":
            names.pop("caches")
        return tuple(names)
