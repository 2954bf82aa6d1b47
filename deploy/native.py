"""Native mode: saga-shop's services and its nginx gateway as local processes, kept by supervisord.

The same commands compose runs (``python -m order`` ...), against RabbitMQ, PostgreSQL and Redis at
the URLs in the environment (defaults: the services' settings classes, docs/conventions.md),
behind nginx rendered from the one gateway template. ``make up`` calls this when no Docker engine
answers; pytest fixtures import it. The work is done in ``deploy/runner/`` (one module per
responsibility); this file is the command line and the names the tests and the benchmark use.

    python deploy/native.py [--run-dir DIR] up [--timeout S] | prepare | down | status | logs

Everything comes from the environment, so a second, isolated stack is just other values::

    SAGA_RUN_DIR=.run/test GATEWAY_PORT=18080 ORDER_HTTP_PORT=18001 ... python deploy/native.py up

Replicas: ``ORDER_REPLICAS``, ``PAYMENT_REPLICAS``, ``PRODUCTION_REPLICAS``,
``IDENTITY_REPLICAS`` (default 1) processes
per service, competing consumers on the same queues, balanced by nginx. Replica ``i`` (0-based)
listens on ``<SERVICE>_HTTP_PORT + 10*i`` and is named ``order``, ``order-2``, ``order-3`` ...

Processes: one supervisord per run dir starts every replica and nginx, restarts one that dies
(at once; with growing delays if it keeps dying as it starts: deploy/runner/processes.py), and
stops them all on ``down``, then itself. ``up`` again starts only what is missing.

Run directory (``--run-dir``, else ``SAGA_RUN_DIR``, else ``.run``; a relative path is taken from
the repository root): ``supervisord.conf`` and its socket, ``logs/<name>.log`` for the gateway
and every replica (``logs/supervisord.log`` for supervisord), the rendered nginx config under
``nginx/``, and ``stack.json`` (the gateway port and replica addresses, so ``status`` finds a
stack started with other values).

``SAGA_SERVICE_CMD_<SERVICE>`` (e.g. ``SAGA_SERVICE_CMD_ORDER="python /tmp/fake.py order"``)
replaces a service's start command; it exists to test this runner before the services do.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: deploy/ is on sys.path, the repository is not
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.runner.cli import down, main, status, up
from deploy.runner.config import (
    ALL_SERVICES,
    DATABASE_URLS,
    GATEWAY,
    GATEWAY_KNOBS,
    REPO_ROOT,
    RUNNER_DEFAULTS,
    SERVICES,
    TEMPLATE,
    TEMPLATE_VARS,
    Replica,
    StackError,
    check_gateway_settings,
    database_url,
    defaults,
    process_sort_key,
    replicas,
    resolve_run_dir,
    service_command,
    stack_env,
)
from deploy.runner.control import rpc
from deploy.runner.gateway import render_template
from deploy.runner.health import http_status, wait_ready
from deploy.runner.processes import log_file, log_tail, read_pid, recorded
from deploy.runner.provision import (
    amqp_vhost,
    drop_service_databases,
    ensure_databases,
    ensure_keys,
    ensure_vhost,
    prepare,
)

__all__ = [
    "ALL_SERVICES", "DATABASE_URLS", "GATEWAY", "GATEWAY_KNOBS", "REPO_ROOT",
    "RUNNER_DEFAULTS", "SERVICES", "TEMPLATE", "TEMPLATE_VARS", "Replica", "StackError",
    "amqp_vhost", "check_gateway_settings", "database_url", "defaults", "down",
    "drop_service_databases", "ensure_databases", "ensure_keys", "ensure_vhost", "http_status",
    "log_file", "log_tail", "main", "prepare", "process_sort_key", "read_pid", "recorded",
    "render_template", "replicas", "resolve_run_dir", "rpc", "service_command", "stack_env",
    "status", "up", "wait_ready",
]


def __getattr__(name: str) -> dict[str, str]:
    if name == "DEFAULTS":  # every default the runner applies; read from the settings on use
        return defaults()
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main(description=__doc__.split("\n\n")[0]))
