"""``synkafka demo``: the main job on local defaults."""

from __future__ import annotations

from adapter.cli._app import app

__all__ = ["demo"]


@app.command()
def demo() -> None:
    """Start the local stack and show synkafka at work (placeholder)."""
