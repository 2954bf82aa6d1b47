# One image for all three services (they share sagakit and one pyproject); compose picks the
# service with `command: python -m <service>`, the same command native mode runs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
COPY deploy ./deploy
RUN pip install . && useradd --system --uid 10001 --no-create-home saga

USER saga
