"""``synkafka demo``: the whole product on local defaults, in one command.

This module only declares the command and its options; :mod:`adapter.devstack.demo_run`
does the work and is imported when the demo runs, so the local stack, the scenarios
and the writer simulator never load for any other command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapter.cli._app import app
from adapter.cli.demo_sizes import (
    DEFAULT_DURATION_S,
    DEFAULT_ROWS,
    QUICK_DURATION_S,
    QUICK_ROWS,
)

__all__ = ["demo"]


@app.command()
def demo(
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help="Use a local PostgreSQL as Synapse's database (default: SQLite).",
        ),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help=f"A short run: {QUICK_ROWS} rows over {QUICK_DURATION_S:g} s, "
            "3 s presence expiry (what the test runs).",
        ),
    ] = False,
    rows: Annotated[
        int | None,
        typer.Option(
            "--rows",
            min=50,
            help=f"Rows to write after the history (default {DEFAULT_ROWS}; "
            f"--quick: {QUICK_ROWS}).",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration",
            min=1.0,
            help=f"Seconds the writing takes (default {DEFAULT_DURATION_S:g}; "
            f"--quick: {QUICK_DURATION_S:g}).",
            show_default=False,
        ),
    ] = None,
    presence_expiry: Annotated[
        float | None,
        typer.Option(
            "--presence-expiry",
            min=2.0,
            help="Seconds without a heartbeat before a presence instance expires "
            "(default 5; --quick: 3; Synapse: 300).",
            show_default=False,
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            help="Folder for the JSON lines, the SQLite file and the children's "
            "logs (default: a new temporary folder, kept after the run).",
            show_default=False,
        ),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option(
            "--live/--plain",
            help="Redraw a live view, or print plain progress lines "
            "(default: live on a terminal).",
            show_default=False,
        ),
    ] = None,
    with_synapse: Annotated[
        bool,
        typer.Option(
            "--with-synapse",
            help="Follow a real Synapse through `synkafka bridge` instead of the "
            "simulated homeserver (Kafka, Redis, Synapse main + worker1; --rows is "
            "then the number of messages, default 300, --quick 60).",
        ),
    ] = False,
) -> None:
    """Run the main job on 127.0.0.1 and print a summary; exit 1 if a check fails.

    Starts a local Kafka (and PostgreSQL with --postgres), a simulated Synapse
    homeserver writing several streams (two writers on events), `synkafka consume`
    with --db and --output, and two `synkafka presence track` instances. Midway it
    stops the consumer (SIGTERM), keeps writing and restarts it, so the gap is
    backfilled from the database; it stops one presence instance (clear) and kills
    the other (expiry). The summary compares the database with the JSON lines:
    lost rows and lag must be zero.
    """
    # The dev stack loads only here, when the demo runs.
    from adapter.devstack import demo_run

    if with_synapse:
        code = demo_run.run_with_synapse(
            postgres=postgres, quick=quick, messages=rows, run_dir=run_dir, live=live
        )
    else:
        code = demo_run.run_simulated(
            postgres=postgres,
            quick=quick,
            rows=rows,
            duration=duration,
            presence_expiry=presence_expiry,
            run_dir=run_dir,
            live=live,
        )
    if code:
        raise typer.Exit(code=code)
