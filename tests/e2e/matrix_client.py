"""Re-export of :mod:`adapter.devstack.services.matrix_client` (the demo uses it too)."""

from adapter.devstack.services.matrix_client import MatrixClient, MatrixError, SyncLoop

__all__ = ["MatrixClient", "MatrixError", "SyncLoop"]
