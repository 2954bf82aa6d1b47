# saga-shop's four services: one image base shared by all (they share sagakit and one
# pyproject.toml), then one target per service: `docker build --target payment .`.
# Each target's CMD is exactly native mode's start command (deploy/native.py: python -m <service>)
# and its HEALTHCHECK asks the service's own /health/live; tests/compose/ holds them to both.
# Live, not ready: Docker's health says whether the container works. A service is live only
# once it has connected to its database and broker at start, and stays live while one of them
# is away (it retries by itself, answering 503): a ready-based health made every dependant
# "unhealthy" through a database's outage, and `docker compose up --wait` (make up) failed on
# it at once even as the stack healed. Readiness is what `make up` waits for next, through the
# gateway, as native mode does; the gateway page shows it.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 saga \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin saga

# The pinned dependencies and the build backend, read from pyproject.toml alone, in a layer of
# their own: a change to the source reuses it, only a change to pyproject.toml reinstalls them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print(*p['build-system']['requires'], *p['project']['dependencies'], sep='\n')" > requirements.txt \
    && pip install --requirement requirements.txt

# Then the project itself, with what is installed already; the sources are not kept.
COPY README.md ./
COPY libs ./libs
COPY services ./services
RUN pip install --no-deps --no-build-isolation . \
    && rm -rf /src

# Mount points of the key and password volumes, owned by the service user: a fresh named volume
# takes the ownership of the directory it is mounted on, so the `keys` job (not root) can write
# to it.
RUN mkdir -p /run/saga-keys/private /run/saga-keys/public \
        /run/saga-secrets/order-db /run/saga-secrets/payment-db /run/saga-secrets/identity-db \
        /run/saga-secrets/rabbitmq \
    && chown -R 10001:10001 /run/saga-keys /run/saga-secrets \
    && chmod 700 /run/saga-keys/private

WORKDIR /app
USER 10001:10001

# In a container the service must listen on every interface, not only on loopback.
FROM base AS order
ENV ORDER_HTTP_HOST=0.0.0.0 \
    ORDER_HTTP_PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{os.environ[\"ORDER_HTTP_PORT\"]}/health/live', timeout=8)"]
CMD ["python", "-m", "order"]

FROM base AS payment
ENV PAYMENT_HTTP_HOST=0.0.0.0 \
    PAYMENT_HTTP_PORT=8002
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{os.environ[\"PAYMENT_HTTP_PORT\"]}/health/live', timeout=8)"]
CMD ["python", "-m", "payment"]

FROM base AS production
ENV PRODUCTION_HTTP_HOST=0.0.0.0 \
    PRODUCTION_HTTP_PORT=8003
EXPOSE 8003
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{os.environ[\"PRODUCTION_HTTP_PORT\"]}/health/live', timeout=8)"]
CMD ["python", "-m", "production"]

FROM base AS identity
ENV IDENTITY_HTTP_HOST=0.0.0.0 \
    IDENTITY_HTTP_PORT=8004
EXPOSE 8004
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(f'http://127.0.0.1:{os.environ[\"IDENTITY_HTTP_PORT\"]}/health/live', timeout=8)"]
CMD ["python", "-m", "identity"]
