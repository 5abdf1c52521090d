"""The bridge between a real Redis and a real Kafka."""
