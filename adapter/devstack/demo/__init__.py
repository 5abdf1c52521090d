"""The demo scenario: a simulated homeserver, a real ``synkafka consume``, presence.

``synkafka demo`` (:mod:`adapter.devstack.demo_run`) starts the local services and hands their
addresses to :class:`DemoScenario`, which runs the main job end to end and returns a
:class:`DemoReport`:

1. **Setup.** Synapse's stream tables in the database, every topic, a presence
   writer's view (:class:`~adapter.runtime.presence_follower.PresenceFollower`, with a
   shortened expiry), two ``synkafka presence track`` processes (``sync1``,
   ``sync2``), and some *history*: rows written before the consumer ever started.
2. **Live.** A simulated homeserver (:class:`SimulatedHomeserver`, in a thread)
   writes rows to the database and publishes each token as one RDATA record, on
   eight or nine streams, with **two writers on ``events``**. ``synkafka consume``
   runs as a real child process with ``--db`` and ``--output`` (JSON lines).
3. **Gap.** At 30% of the rows the consumer gets SIGTERM (it commits and exits 0);
   the homeserver keeps writing. ``sync1`` gets SIGTERM (it publishes its clear)
   and, a little later, ``sync2`` gets SIGKILL (only the expiry can remove it).
4. **Catch-up.** At 60% the consumer starts again: it resumes from its committed
   POSITION, reads the gap from the database (``source: backfill``) and goes live.
   The homeserver then re-sends its last few ``events`` records, as a writer does
   after a reconnect; the consumer must drop every one of them.
5. **Drain and check.** The homeserver stops; the demo waits until every token is
   delivered and ``synkafka lag`` (:func:`~adapter.runtime.lag.measure_lag`) shows
   zero lag in tokens and messages, stops the consumer, and compares the
   database's rows (and the typing rows, which have no table) with the JSON lines.
   ``synkafka feed`` runs as a child from the setup on (history included); once it
   has committed every events record it is stopped, and a ``read_committed`` reader
   checks that every event the database holds is on the feed topic exactly once.

Process handling: every child is started through the injected :data:`Spawn`
(the CLI passes :class:`~adapter.devstack.services._process.ManagedProcess`, which sets the
parent-death signal, so start the scenario from the main thread) and is stopped in
``finally``, also on Ctrl-C. The runner (:mod:`adapter.devstack.demo_run`) injects it,
so the scenario does not depend on how processes are started.

The terminal view (:class:`LiveView`) redraws a block of lines in place; off a
terminal :class:`PlainView` prints one line every few seconds.

The modules: :mod:`~adapter.devstack.demo.settings` (settings, shared constants),
:mod:`~adapter.devstack.demo.homeserver` (the simulated homeserver),
:mod:`~adapter.devstack.demo.children` (the consumer and presence processes),
:mod:`~adapter.devstack.demo.feed` (the event feed's process and its read-back),
:mod:`~adapter.devstack.demo.deliveries` (the consumer's JSON lines),
:mod:`~adapter.devstack.demo.lag_sampler`, :mod:`~adapter.devstack.demo.views` (the
terminal views), :mod:`~adapter.devstack.demo.checks` (the final comparison),
:mod:`~adapter.devstack.demo.report` (the summary) and
:mod:`~adapter.devstack.demo.scenario` (the steps).
"""

from __future__ import annotations

from adapter.cli.demo_sizes import (
    DEFAULT_DURATION_S,
    DEFAULT_ROWS,
    QUICK_DURATION_S,
    QUICK_ROWS,
)
from adapter.devstack.demo.children import ChildProcess, Spawn
from adapter.devstack.demo.homeserver import SimulatedHomeserver
from adapter.devstack.demo.report import DemoReport
from adapter.devstack.demo.scenario import DemoScenario
from adapter.devstack.demo.settings import DemoSettings
from adapter.devstack.demo.views import Display, LiveView, PlainView, StreamTotals

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_ROWS",
    "QUICK_DURATION_S",
    "QUICK_ROWS",
    "ChildProcess",
    "DemoReport",
    "DemoScenario",
    "DemoSettings",
    "Display",
    "LiveView",
    "PlainView",
    "SimulatedHomeserver",
    "Spawn",
    "StreamTotals",
]
