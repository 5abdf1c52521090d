"""The dev stack: local services, the writer simulator, and the demo with its views.

Nothing in the product imports it (an import contract holds this): only
``synkafka demo`` (lazily), the tests and the benchmarks do.
"""
