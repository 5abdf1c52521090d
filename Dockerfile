# synkafka's image for docker-compose.yml (bridge and consumer).
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNKAFKA_SCHEMA_DIR=/opt/synkafka/schemas

WORKDIR /opt/synkafka
# The Avro schemas are data, not package files: the package finds them through
# SYNKAFKA_SCHEMA_DIR once it is installed outside the source tree.
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home synkafka

USER synkafka
EXPOSE 9466
CMD ["synkafka", "--help"]
