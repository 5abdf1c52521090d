"""The I/O shells: Kafka, Synapse's database, Redis, and the Prometheus metrics.

The only code that imports a client library; each shell turns its library's objects
into the core's values at the edge.
"""
