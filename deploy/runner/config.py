"""Native mode's configuration: the environment every process gets, from the caller's and the
defaults, and what the runner refuses before anything starts.

A service's own defaults (broker and database URLs, HTTP host and port, the gateway's bind) are
read from its settings class, where they are stated once; :data:`RUNNER_DEFAULTS` holds only
what the runner alone reads (the admin URL, the gateway's port and limits, replica counts).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "gateway" / "templates" / "gateway.conf.template"
# The services of the saga (events, dead letters), and every service process the runner starts.
SERVICES = ("order", "payment", "production")
IDENTITY = "identity"
ALL_SERVICES = (*SERVICES, IDENTITY)
GATEWAY = "gateway"
# The shop page and operator view (plain files nginx serves; compose mounts the same folder).
SITE_ROOT = REPO_ROOT / "gateway" / "site"
TEMPLATE_VARS = ("GATEWAY_LISTEN", "GATEWAY_RATE_LIMIT", "GATEWAY_RATE_BURST", "GATEWAY_SITE_ROOT",
                 "GATEWAY_LIST_RATE_LIMIT", "GATEWAY_LIST_RATE_BURST", "GATEWAY_CONN_LIMIT",
                 "GATEWAY_CLIENT_TIMEOUT", "ORDER_UPSTREAM_SERVERS", "PAYMENT_UPSTREAM_SERVERS",
                 "PRODUCTION_UPSTREAM_SERVERS", "IDENTITY_UPSTREAM_SERVERS")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", ""}
RATE = re.compile(r"[1-9][0-9]*r/[sm]")
# The gateway's limits: each variable, the shape nginx needs, an example of it.
GATEWAY_KNOBS = (
    ("GATEWAY_RATE_LIMIT", RATE, "30r/s or 600r/m"),
    ("GATEWAY_RATE_BURST", re.compile(r"[0-9]+"), "60"),
    ("GATEWAY_LIST_RATE_LIMIT", RATE, "5r/s or 300r/m"),
    ("GATEWAY_LIST_RATE_BURST", re.compile(r"[0-9]+"), "10"),
    ("GATEWAY_CONN_LIMIT", re.compile(r"[1-9][0-9]*"), "20"),
    ("GATEWAY_CLIENT_TIMEOUT", re.compile(r"[1-9][0-9]*(?:ms|s|m)?"), "10s"),
)
# Passive circuit breaking: 3 failures within 10 s take a replica out for 10 s.
UPSTREAM_SERVER_OPTIONS = "max_fails=3 fail_timeout=10s"
REPLICA_PORT_STEP = 10
DATABASE_URLS = ("ORDER_DATABASE_URL", "PAYMENT_DATABASE_URL", "IDENTITY_DATABASE_URL")

# What only the runner reads (docs/conventions.md); the services' own defaults: settings_defaults.
RUNNER_DEFAULTS = {
    "POSTGRES_ADMIN_URL": "postgresql://postgres@127.0.0.1:5432/postgres",
    "GATEWAY_PORT": "8080",
    **{f"{service.upper()}_REPLICAS": "1" for service in ALL_SERVICES},
    # Per client address, sized to the stack's measured capacity (SECURITY.md, "Limits"): a
    # benchmark or a test stack raises them for itself.
    "GATEWAY_RATE_LIMIT": "30r/s",
    "GATEWAY_RATE_BURST": "60",
    "GATEWAY_LIST_RATE_LIMIT": "5r/s",
    "GATEWAY_LIST_RATE_BURST": "10",
    "GATEWAY_CONN_LIMIT": "20",
    "GATEWAY_CLIENT_TIMEOUT": "10s",
}


class StackError(RuntimeError):
    """The stack could not be brought to the state asked for; the message says why."""


def say(message: str) -> None:
    print(f"native: {message}", flush=True)


def _settings_classes() -> dict[str, type[Any]]:
    """Each service's settings class, imported on first use: ``down``, ``status`` and ``logs``
    need no virtualenv."""
    from identity.settings import IdentitySettings
    from order.settings import OrderSettings
    from payment.settings import PaymentSettings
    from production.settings import ProductionSettings

    return {"order": OrderSettings, "payment": PaymentSettings,
            "production": ProductionSettings, "identity": IdentitySettings}


@functools.cache
def settings_defaults() -> dict[str, str]:
    """The defaults the runner needs that the services' settings classes state: read from them."""
    from sagakit.settings import ServiceSettings

    def default(settings: type[Any], field: str) -> str:
        return str(settings.model_fields[field].default)

    classes = _settings_classes()
    found = {"RABBITMQ_URL": default(ServiceSettings, "rabbitmq_url"),
             # Loopback unless set: the development accounts are on (IDENTITY_SEED_DEV_ACCOUNTS).
             "GATEWAY_BIND": default(classes["identity"], "gateway_bind")}
    for service, settings in classes.items():
        prefix = service.upper()
        found[f"{prefix}_HTTP_HOST"] = default(settings, "http_host")
        found[f"{prefix}_HTTP_PORT"] = default(settings, "http_port")
        if "database_url" in settings.model_fields and f"{prefix}_DATABASE_URL" in DATABASE_URLS:
            found[f"{prefix}_DATABASE_URL"] = default(settings, "database_url")
    return found


@functools.cache
def settings_names(service: str) -> frozenset[str]:
    """Every variable ``service``'s settings class reads (a field's alias, else the class's
    prefix and the field's name): what its replicas are configured by, and nothing another
    service reads."""
    settings = _settings_classes()[service]
    prefix = settings.model_config.get("env_prefix", "")
    return frozenset(
        (alias if isinstance(alias := field.validation_alias, str) else f"{prefix}{name}").upper()
        for name, field in settings.model_fields.items())


def defaults() -> dict[str, str]:
    """Every default the runner applies (``DEFAULTS``): the settings classes' and its own."""
    return {**settings_defaults(), **RUNNER_DEFAULTS}


def __getattr__(name: str) -> dict[str, str]:
    if name == "DEFAULTS":  # computed on use: importing this module needs no pydantic
        return defaults()
    raise AttributeError(name)


def stack_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every process gets: the caller's, plus the defaults and upstreams.

    ``<SERVICE>_UPSTREAM`` (host:port of each replica, space-separated) defaults to this stack's
    replicas; ``<SERVICE>_UPSTREAM_SERVERS``, what the gateway template takes, to one nginx
    ``server`` line per address in it.
    """
    full = dict(os.environ if env is None else env)
    for name, value in defaults().items():
        full.setdefault(name, value)
    bind = full["GATEWAY_BIND"]
    full.setdefault("GATEWAY_LISTEN", f"{f'[{bind}]' if ':' in bind else bind}:"
                                      f"{full['GATEWAY_PORT']}")
    full.setdefault("GATEWAY_SITE_ROOT", str(SITE_ROOT))
    for service in ALL_SERVICES:
        prefix = service.upper()
        full.setdefault(f"{prefix}_UPSTREAM", " ".join(r.address for r in replicas(service, full)))
        full.setdefault(f"{prefix}_UPSTREAM_SERVERS", "\n    ".join(
            f"server {address} {UPSTREAM_SERVER_OPTIONS};"
            for address in full[f"{prefix}_UPSTREAM"].split()))
    full.setdefault("PYTHONUNBUFFERED", "1")  # log lines reach the log file as they happen
    # Nothing is exported natively unless asked: no Jaeger or Seq to link an order to (its
    # links are null; its trace id finds its lines in .run/logs).
    exported = full.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not (exported or full.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        full.setdefault("ORDER_JAEGER_UI_URL", "")
    if not (exported or full.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")):
        full.setdefault("ORDER_SEQ_UI_URL", "")
    return full


@dataclass(frozen=True)
class Replica:
    """One process of a service: replica ``index`` (0-based) listens on base port + 10*index."""

    service: str
    index: int
    host: str  # what it binds
    port: int

    @property
    def name(self) -> str:
        """``order`` for the first replica (the names from before replicas), then ``order-2``..."""
        return self.service if self.index == 0 else f"{self.service}-{self.index + 1}"

    @property
    def address(self) -> str:
        """host:port to reach it at, as nginx writes it."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        host = f"[{host}]" if ":" in host else host  # an IPv6 address in nginx's host:port
        return f"{host}:{self.port}"

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {**env, f"{self.service.upper()}_HTTP_PORT": str(self.port)}


def replicas(service: str, env: Mapping[str, str]) -> list[Replica]:
    """The replicas `env` asks for (``<SERVICE>_REPLICAS``, default 1)."""
    prefix = service.upper()
    raw = env.get(f"{prefix}_REPLICAS", RUNNER_DEFAULTS[f"{prefix}_REPLICAS"])
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise StackError(f"{prefix}_REPLICAS must be a whole number from 1, not {raw!r}")
    host = env.get(f"{prefix}_HTTP_HOST") or settings_defaults()[f"{prefix}_HTTP_HOST"]
    port = int(env.get(f"{prefix}_HTTP_PORT") or settings_defaults()[f"{prefix}_HTTP_PORT"])
    return [Replica(service, i, host, port + REPLICA_PORT_STEP * i) for i in range(int(raw))]


def database_url(env: Mapping[str, str], name: str) -> str:
    """A service's database URL as the service connects with it: with the password of
    ``<NAME without _URL>_PASSWORD_FILE`` when one is set (sagakit.settings.DatabaseSettings)."""
    from sagakit.settings import read_password_file, with_password

    url = env[name]
    if path := env.get(name.removesuffix("_URL") + "_PASSWORD_FILE"):
        return with_password(url, read_password_file(path))
    return url


def development_credentials(env: Mapping[str, str]) -> list[str]:
    """What in `env` is a credential anyone can read in this repository."""
    found = []
    if env.get("IDENTITY_SEED_DEV_ACCOUNTS", "true").lower() not in ("0", "false", "no"):
        found.append("the development accounts (IDENTITY_SEED_DEV_ACCOUNTS=false turns them off)")
    for name in DATABASE_URLS:
        known = urlsplit(settings_defaults()[name]).password
        if urlsplit(database_url(env, name)).password in (known, None, ""):
            found.append(f"{name}'s development password (or none)")
    if unquote(urlsplit(env["RABBITMQ_URL"]).password or "guest") == "guest":
        found.append("RABBITMQ_URL's guest account")
    return found


def check_gateway_settings(env: Mapping[str, str]) -> None:
    """Refuse limits nginx would misread, and a public gateway with development credentials,
    before anything starts.

    On loopback (the default) the development credentials are safe and `make up` needs nothing
    else; listening anywhere else (GATEWAY_BIND) needs real secrets, from the environment or
    ``*_FILE`` files, and the runner refuses to start until every one is replaced."""
    if env["GATEWAY_BIND"] not in LOCAL_HOSTS and (known := development_credentials(env)):
        raise StackError(f"GATEWAY_BIND={env['GATEWAY_BIND']} would publish a stack reachable "
                         f"with credentials anyone can read: {'; '.join(known)}. Set real "
                         "secrets first (SECURITY.md), or keep GATEWAY_BIND=127.0.0.1")
    for name, shape, example in GATEWAY_KNOBS:
        if not shape.fullmatch(env[name]):
            raise StackError(f"{name} must read like {example}, not {env[name]!r}")


def resolve_run_dir(run_dir: str | os.PathLike[str] | None = None) -> Path:
    path = Path(run_dir or os.environ.get("SAGA_RUN_DIR") or ".run")
    return path if path.is_absolute() else REPO_ROOT / path


def service_command(service: str, env: Mapping[str, str]) -> list[str]:
    override = env.get(f"SAGA_SERVICE_CMD_{service.upper()}")
    return shlex.split(override) if override else [sys.executable, "-m", service]


PROCESS_NAME = re.compile(rf"(?:{GATEWAY}|(?:{'|'.join(ALL_SERVICES)})(?:-[2-9]|-[1-9][0-9]+)?)")


def process_sort_key(name: str) -> tuple[int, int]:
    """Gateway first, then each service's replicas in order."""
    service, _, number = name.partition("-")
    rank = 0 if service == GATEWAY else 1 + ALL_SERVICES.index(service)
    return rank, int(number or 1)
