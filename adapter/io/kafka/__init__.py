"""Thin wrappers around confluent-kafka: the only package that imports it."""
