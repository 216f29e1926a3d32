# The online server and CLI image used by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY featurestore featurestore
COPY registry registry
COPY materializers materializers
COPY online_server online_server
COPY migrations migrations
RUN pip install --no-cache-dir .
# The production profile's setup and serve steps (docker-compose.yml runs /app/deploy/production.sh).
COPY deploy deploy
WORKDIR /repo
ENTRYPOINT ["featurestore"]
