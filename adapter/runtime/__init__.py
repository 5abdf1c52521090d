"""The shell: processes that wire the core to Kafka, the database and Redis."""
