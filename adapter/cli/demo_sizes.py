"""The demo's default sizes, apart from the demo itself.

``synkafka demo --help`` shows them, and every synkafka start-up builds that help, so
they live in a module that imports nothing: the scenario modules load only when the
demo runs.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_MESSAGES",
    "DEFAULT_ROWS",
    "QUICK_DURATION_S",
    "QUICK_MESSAGES",
    "QUICK_ROWS",
]

#: Rows (one token each; a state event adds a second row) and seconds of writing.
DEFAULT_ROWS: Final = 3000
DEFAULT_DURATION_S: Final = 30.0
#: ``--quick`` (the test): a smaller, faster run of the same scenario.
QUICK_ROWS: Final = 600
QUICK_DURATION_S: Final = 8.0
#: Matrix messages sent by ``--with-synapse`` (``--rows`` there).
DEFAULT_MESSAGES: Final = 300
QUICK_MESSAGES: Final = 60
