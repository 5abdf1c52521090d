# synkafka's image for docker-compose.yml (bridge and consumer).
# Everything is installed from requirements.lock with hashes required: the build stage
# makes the wheel with the locked setuptools, the image gets the wheel and the lock's
# runtime packages only (no dev tools, no Synapse).
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN python dev/lock export setuptools wheel > /tmp/build-requirements.txt \
    && pip install --require-hashes --no-deps -r /tmp/build-requirements.txt \
    && pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
    && python dev/lock export runtime > /dist/runtime-requirements.txt

FROM python:3.11.10-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist /tmp/dist
# The Avro schemas are package data inside the wheel; SYNKAFKA_SCHEMA_DIR can still
# point elsewhere.
RUN pip install --require-hashes --no-deps -r /tmp/dist/runtime-requirements.txt \
    && pip install --no-deps /tmp/dist/synkafka-*.whl \
    && pip check \
    && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --no-create-home synkafka

USER synkafka
EXPOSE 9466
CMD ["synkafka", "--help"]
