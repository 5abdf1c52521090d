"""Handlers that ``synkafka consume --handler tests.integration.handlers:NAME`` loads."""

from __future__ import annotations

from adapter.core.ports import StreamUpdate

#: A made-up access token; no line, header or error may ever show it.
SECRET_TOKEN = "syt_YWxpY2U_sEcReTsEcReT_1a2b3c"  # noqa: S105


def fail_with_a_token(update: StreamUpdate) -> None:
    """Fail the way a careless handler does: with a token in the message."""
    raise RuntimeError(f"the homeserver refused {SECRET_TOKEN} at {update.token}")
