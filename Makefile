# saga-shop: `make up` starts the whole stack, `make test` runs the tests.
#
# `make up` uses compose when a Docker engine answers, otherwise native mode (deploy/native.py:
# local processes against the RabbitMQ/PostgreSQL/Redis at the configured URLs, nginx in front).
# Force one with SAGA_MODE=compose|native. Variables given on the command line reach every
# process, as GNU make exports them: `make up PRODUCTION_PREPARATION_SECONDS=0`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
SAGA_MODE ?= auto
PYTEST_ARGS ?=
# Where mypy looks (strict: [tool.mypy] in pyproject.toml): the shared library, each service
# package, the runner, the benchmark and the tests.
MYPY_PATHS ?= libs/sagakit services/order/order services/payment/payment \
              services/production/production services/identity/identity deploy bench tests

# Prints "compose" or "native"; a client without an engine (or without compose) means native.
MODE := $(shell if [ "$(SAGA_MODE)" != auto ]; then echo "$(SAGA_MODE)"; \
	elif timeout 10 docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; \
	then echo compose; else echo native; fi)
# down/ps/logs work without a venv too: the runner needs only the standard library for them.
RUNNER = $(if $(wildcard $(PY)),$(PY),python3) deploy/native.py

.PHONY: help bootstrap up up-ha down down-volumes ps logs demo test test-compose test-chaos lint clean bench screenshots

help:
	@echo "make up         start everything and wait until healthy (compose or native: $(MODE))"
	@echo "make down       stop everything (data kept; make down-volumes drops it too)"
	@echo "make ps         what runs, and whether it is ready"
	@echo "make logs       follow the logs"
	@echo "make demo       one order of each outcome, each timeline live, with trace and log links"
	@echo "make up-ha      compose only: the same stack on a three-node RabbitMQ cluster"
	@echo "make test       run the tests (PYTEST_ARGS='-k order' to pass options)"
	@echo "make test-compose the e2e and chaos tests against a compose stack (needs Docker)"
	@echo "make screenshots regenerate docs/img/ (the shop and operator views, in Chromium)"
	@echo "make test-chaos every chaos scenario, broker and database restarts included (~2 min)"
	@echo "make lint       ruff and mypy"
	@echo "make bench      benchmark on an own isolated stack (BENCH_ARGS='--rate 50 --duration 60')"
	@echo "make bootstrap  create .venv and install nginx if missing (up and test do it too)"
	@echo "make clean      stop, then remove run state and caches (not .venv)"

bootstrap:
	@bash deploy/bootstrap.sh

# Every file a compose stack may have been started with: `make down` stops any of them.
COMPOSE_ALL_FILES = -f docker-compose.yml -f docker-compose.ha.yml

# Compose mode needs only Docker on the host: no virtualenv, no nginx, no host Python.
# Then every service ready through the gateway (database and broker reachable), as native mode
# waits: the containers' health is liveness (Dockerfile says why). The gateway image's wget asks.
WAIT_READY = docker compose exec -T gateway sh -c 'for i in $$(seq 180); do ok=1; \
	for s in order payment production identity; do \
	wget -q -O /dev/null "http://127.0.0.1:$${GATEWAY_PORT}/health/$$s/ready" || ok=0; done; \
	[ $$ok = 1 ] && exit 0; sleep 1; done; \
	echo "not every service is ready after 180 s: make ps, make logs" >&2; exit 1'

ifeq ($(MODE),compose)
up:
	docker compose up -d --build --wait $(COMPOSE_UP_ARGS)
	@$(WAIT_READY)
	@echo "saga-shop is up: http://127.0.0.1:$${GATEWAY_PORT:-8080}/ (make ps, make logs, make down)"
	@echo "development accounts (README.md, \"Accounts\"): ana@example.com / ana-dev-password, bob@example.com / bob-dev-password; operator client ops-console / ops-dev-secret"
else
up: bootstrap
	$(PY) deploy/native.py up
endif

# RabbitMQ as a three-node cluster of quorum queues (docker-compose.ha.yml; compose only).
up-ha:
	docker compose -f docker-compose.yml -f docker-compose.ha.yml up -d --build --wait $(COMPOSE_UP_ARGS)
	@$(WAIT_READY)
	@echo "saga-shop is up on a 3-node RabbitMQ cluster: http://127.0.0.1:$${GATEWAY_PORT:-8080}/"

# `make down` keeps the data (named volumes in compose, databases natively);
# `make down-volumes` also drops the compose volumes, so the next `make up` starts afresh.
down:
ifeq ($(MODE),compose)
	docker compose $(COMPOSE_ALL_FILES) down --remove-orphans
else
	@$(RUNNER) down
endif

# Twice: in the model of both files the HA overlay mounts the brokers' own volumes where the
# single broker's rabbitmq-data was, so that model does not name rabbitmq-data at all (left
# behind, it kept the old broker account while the new start made a new password).
down-volumes:
ifeq ($(MODE),compose)
	docker compose $(COMPOSE_ALL_FILES) down --remove-orphans --volumes
	docker compose down --remove-orphans --volumes
else
	@$(RUNNER) down
endif

ps:
ifeq ($(MODE),compose)
	docker compose ps
else
	@$(RUNNER) status
endif

logs:
ifeq ($(MODE),compose)
	docker compose logs -f
else
	@$(RUNNER) logs
endif

# `make demo` (deploy/demo.py, standard library only) against the running stack. In compose
# mode it runs in a one-shot container of the order image on the compose network, so the host
# needs only Docker; natively with the project's Python. GATEWAY= points it elsewhere.
ifeq ($(MODE),compose)
demo:
	docker compose run --rm --no-deps --volume "$(CURDIR)/deploy:/app/deploy:ro" \
		--env GATEWAY=$${GATEWAY:-http://gateway:8080} order python -m deploy.demo
else
demo:
	@$(if $(wildcard $(PY)),$(PY),python3) -m deploy.demo
endif

test: bootstrap
	$(PY) -m pytest $(PYTEST_ARGS)

# The benchmark (docs/performance.md): its own stack on ports 58500s, vhost saga_bench, Redis db 9.
BENCH_ARGS ?=
bench: bootstrap
	@$(PY) -c 'import aiohttp, matplotlib' 2>/dev/null || $(PY) -m pip install --quiet \
		--disable-pip-version-check -e '.[dev,bench]'
	$(PY) -m bench $(BENCH_ARGS)

# The same black-box tests (tests/e2e, tests/chaos) against stacks started with docker compose
# (projects saga-e2e and saga-chaos, gateway on 28080/28580): tests/stacks.py.
test-compose: bootstrap
	CHAOS_FULL=1 $(PY) -m pytest tests/e2e tests/chaos --stack=compose $(PYTEST_ARGS)

# The full chaos set: restarts RabbitMQ (stop_app/start_app) and PostgreSQL on this machine.
# The README's pictures of the shop page and the operator view, taken against the e2e stack.
screenshots: bootstrap
	$(PY) -m tests.e2e.screenshots $(PYTEST_ARGS)

test-chaos: bootstrap
	CHAOS_FULL=1 $(PY) -m pytest tests/chaos $(PYTEST_ARGS)

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy $(MYPY_PATHS)

clean: down
	@for dir in .run/*/; do [ ! -d "$$dir" ] || $(RUNNER) --run-dir "$$dir" down; done
	rm -rf .run .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./.venv -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-prune -exec rm -rf {} +
