"""``python -m adapter`` runs the synkafka CLI."""

from adapter.cli import main

main()
