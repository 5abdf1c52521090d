"""The Avro codec: schemas, single-object encoding and the generated readers/writers.

Pure like the core it sits on: bytes in, values out.
"""
