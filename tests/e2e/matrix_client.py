"""Re-export of :mod:`adapter.localstack.matrix_client` (the demo uses it too)."""

from adapter.localstack.matrix_client import MatrixClient, MatrixError, SyncLoop

__all__ = ["MatrixClient", "MatrixError", "SyncLoop"]
