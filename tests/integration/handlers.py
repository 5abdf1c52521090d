"""Handlers that ``synkafka consume --handler tests.integration.handlers:NAME`` loads."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time

from adapter.core.feed import FeedEvent
from adapter.core.ports import StreamUpdate

#: A made-up access token; no line, header or error may ever show it.
SECRET_TOKEN = "syt_YWxpY2U_sEcReTsEcReT_1a2b3c"  # noqa: S105


def fail_with_a_token(update: StreamUpdate) -> None:
    """Fail the way a careless handler does: with a token in the message."""
    raise RuntimeError(f"the homeserver refused {SECRET_TOKEN} at {update.token}")


# -- feed reader handlers (synkafka feed-consume) ------------------------------------
# Each logs the events it handled, one JSON line each, to $FEED_TEST_LOG, after
# waiting $FEED_TEST_DELAY seconds (an I/O-bound handler). An event whose content
# body is "poison" fails every time.

_feed_log_lock = threading.Lock()


def _feed_logged(event: FeedEvent) -> None:
    if json.loads(event.json).get("content", {}).get("body") == "poison":
        raise RuntimeError(f"cannot handle {event.event_id}")
    line = json.dumps(
        {
            "pid": os.getpid(),
            "thread": threading.get_ident(),
            "event_id": event.event_id,
            "room_id": event.room_id,
            "stream_ordering": event.stream_ordering,
        }
    )
    with _feed_log_lock, open(os.environ["FEED_TEST_LOG"], "a") as log:
        log.write(line + "\n")


def feed_log(event: FeedEvent) -> None:
    """A plain handler: sleeps, then logs the event."""
    time.sleep(float(os.environ.get("FEED_TEST_DELAY", "0")))
    _feed_logged(event)


async def feed_log_async(event: FeedEvent) -> None:
    """An async handler: awaits, then logs the event."""
    await asyncio.sleep(float(os.environ.get("FEED_TEST_DELAY", "0")))
    _feed_logged(event)
