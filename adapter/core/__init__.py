"""The pure protocol core: commands, rows, positions, presence rules, topics, errors.

Nothing here does I/O or imports a client library (an import contract holds this), so
every rule can be tested as a plain function call.
"""
