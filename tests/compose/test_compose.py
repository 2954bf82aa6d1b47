"""Compose mode cannot run on the machines this project is built on (no Docker engine), so these
tests hold docker-compose.yml to the truths native mode proves every day: the variables each
settings class reads, native defaults, the gateway template's upstreams, and the shape compose
needs (healthchecks, one network, nothing published but the gateway and the operator UIs).
Pure and fast: they read files and import settings classes, nothing more.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from pydantic_settings import BaseSettings, EnvSettingsSource

from deploy import native
from tests.compose.files import (
    COMPOSE_FILE,
    REPO,
    SETTINGS,
    TEMPLATE,
    compose,
    dockerfile_of,
    env_of,
    interpolate,
    raw_compose,
    service_env,
    services,
)

# Settings compose leaves to the code's default, each with the reason.
NOT_IN_COMPOSE = {
    "PRODUCTION_SEED_STOCK": "data, not a knob: a JSON copy of the menu's stock in compose "
                             "would be a second source of truth",
    "PRODUCTION_INBOX_TTL_SECONDS": "derived from DEAD_LETTER_RETENTION_DAYS (and checked "
                                    "against it): a figure here could fall out of step",
    # Links for a person's browser, not addresses a container connects to: the defaults are
    # already where compose publishes Jaeger and Seq (127.0.0.1:16686, :5380).
    "ORDER_JAEGER_UI_URL": "a browser link; the default is compose's published Jaeger port",
    "ORDER_SEQ_UI_URL": "a browser link; the default is compose's published Seq port",
    # The key sets inline: compose gives them as files on volumes (AUTH_JWKS_FILE and
    # IDENTITY_SIGNING_KEYS_FILE), made by the `keys` job.
    "AUTH_JWKS": "compose gives the public key set as a file",
    "IDENTITY_SIGNING_KEYS": "compose gives the signing keys as a file",
}
# Read by the OpenTelemetry SDK, not by the settings classes.
TELEMETRY_ENV = {"OTEL_SERVICE_NAME", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_RESOURCE_ATTRIBUTES"}
# Also the SDK's, and a knob: the caller's sampler, as natively (README, "Follow one order").
SAMPLER_ENV = {"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}
# The only published ports: (host ip, host port, container port); "" = every interface.
PUBLISHED = {
    "gateway": {("127.0.0.1", "8080", "8080")},
    "jaeger": {("127.0.0.1", "16686", "16686")},
    "seq": {("127.0.0.1", "5380", "80")},
    "rabbitmq": {("127.0.0.1", "15672", "15672")},
}
# Stateful containers and where each keeps its data (a named volume must be mounted there).
DATA_DIRS = {"order-db": "/var/lib/postgresql/data", "payment-db": "/var/lib/postgresql/data",
             "redis": "/data", "rabbitmq": "/var/lib/rabbitmq", "seq": "/data"}
# The gateway's limits: compose's defaults are native mode's.
GATEWAY_ANNOUNCED = {name: native.DEFAULTS[name] for name, _, _ in native.GATEWAY_KNOBS}
# One-shot jobs: they run to completion before what depends on them starts (no healthcheck:
# they are not meant to stay up).
JOBS = {"keys"}


def env_names(settings: type[BaseSettings]) -> dict[str, str]:
    """Field name -> the variable it is configured by: its alias, else env_prefix + name."""
    prefix = settings.model_config.get("env_prefix", "")
    names = {}
    for field_name, field in settings.model_fields.items():
        alias = field.validation_alias
        assert alias is None or isinstance(alias, str), \
            f"{settings.__name__}.{field_name}: teach this test {type(alias).__name__}"
        names[field_name] = (alias or f"{prefix}{field_name}").upper()
    return names


def read_by_pydantic(settings: type[BaseSettings]) -> set[str]:
    """Every variable pydantic-settings itself would read for `settings` (upper case).

    A private helper of the pinned pydantic-settings: if it moves, this fails loudly.
    """
    source = EnvSettingsSource(settings)
    return {env.upper() for name, field in settings.model_fields.items()
            for _, env, _ in source._extract_field_info(field, name)}


def has_healthcheck(name: str) -> bool:
    check = services()[name].get("healthcheck")
    if check is not None:
        return not check.get("disable") and check.get("test") not in (["NONE"], "NONE", None)
    if "build" in services()[name]:
        dockerfile, target = dockerfile_of(name)
        return dockerfile.healthcheck(target) is not None
    return False


def publish_specs(name: str) -> set[tuple[str, str, str]]:
    specs = set()
    for port in services()[name].get("ports", []):
        assert isinstance(port, str), f"{name}: write ports as host_ip:published:target strings"
        host_ip, published, target = (["", *port.split(":")] if port.count(":") == 1
                                      else port.split(":"))
        specs.add((host_ip, published, target))
    return specs


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable a settings class reads leaks in from the shell running the tests."""
    read = set().union(*(read_by_pydantic(s) for s in SETTINGS.values()))
    for name in list(os.environ):
        if name.upper() in read:
            monkeypatch.delenv(name)
    return monkeypatch


# --- The file itself ---------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    # The Compose Specification's own schema, as the pinned check-jsonschema package ships it.
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text())
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_every_image_is_pinned_to_a_version() -> None:
    for name, service in services().items():
        if "image" in service and "build" not in service:
            tag = service["image"].rpartition(":")[2]
            assert "/" not in tag and tag not in ("", "latest"), f"{name}: pin {service['image']}"


# --- The services' environment: the same names and meanings as native mode ----------------------


def test_this_test_reads_settings_names_as_pydantic_settings_does() -> None:
    for settings in SETTINGS.values():
        assert set(env_names(settings).values()) <= read_by_pydantic(settings)
    every_name = set().union(*(env_names(s).values() for s in SETTINGS.values()))
    assert set(NOT_IN_COMPOSE) <= every_name, "an exemption names no setting any more"


@pytest.mark.parametrize("service", SETTINGS)
def test_service_sets_exactly_the_variables_its_settings_read(service: str) -> None:
    wanted = set(env_names(SETTINGS[service]).values()) - set(NOT_IN_COMPOSE)
    given = set(env_of(service)) - TELEMETRY_ENV - SAMPLER_ENV
    assert not wanted - given, f"{service}: compose does not set {sorted(wanted - given)}"
    assert not given - wanted, f"{service}: no setting reads {sorted(given - wanted)}"


@pytest.mark.parametrize("service", SETTINGS)
def test_service_values_mean_what_native_defaults_mean(
    service: str, clean_environ: pytest.MonkeyPatch
) -> None:
    settings = SETTINGS[service]
    native_defaults = settings()
    for name, value in env_of(service).items():
        clean_environ.setenv(name, value)
    in_compose = settings()  # also proves every compose value parses
    names = env_names(settings)
    for field in settings.model_fields:
        if names[field] in NOT_IN_COMPOSE:
            continue  # the code's default, in both modes
        ours, theirs = getattr(in_compose, field), getattr(native_defaults, field)
        if field == "http_host":
            assert ours == "0.0.0.0", f"{service} must listen on every interface in a container"
        elif field.endswith("_file"):  # natively the runner's run dir; here a mounted volume
            assert ours and ours.startswith(("/run/saga-keys/", "/run/saga-secrets/")), \
                f"{service}.{field}: {ours!r}"
        elif field.endswith("_url"):
            a, b = urlsplit(ours), urlsplit(theirs)
            assert (a.scheme, a.port, a.path) == (b.scheme, b.port, b.path), f"{service}.{field}"
            # The same role, except the broker's: natively the local broker's guest (which only
            # answers on loopback), in compose an account of the stack's own.
            assert a.username == ("saga" if field == "rabbitmq_url" else b.username), field
            assert a.hostname in services(), f"{service}.{field}: {a.hostname} is no service"
            # Its password is the file's (the `keys` job's), none in the URL.
            assert a.password is None, f"{service}.{field}"
            password_file = field.removesuffix("_url") + "_password_file"
            if password_file in settings.model_fields:
                assert getattr(in_compose, password_file), f"{service}.{password_file}"
        else:
            assert ours == theirs, f"{service}.{field}: compose {ours!r}, native {theirs!r}"


def test_topology_is_literal_and_knobs_default_to_native() -> None:
    # A shell set up for native mode (RABBITMQ_URL=...@127.0.0.1) must not reach a container.
    for service in SETTINGS:
        for name, value in service_env(raw_compose()["services"][service]).items():
            if name.endswith(("_URL", "_HTTP_HOST", "_HTTP_PORT")) or name in TELEMETRY_ENV:
                assert "$" not in value, f"{service}: {name} must not come from the shell"
    tuned = service_env(compose({"LOG_LEVEL": "DEBUG", "OTEL_TRACES_SAMPLER":
                                 "parentbased_always_on"})["services"]["order"])
    assert tuned["LOG_LEVEL"] == "DEBUG", "tuning knobs take the caller's environment"
    assert tuned["OTEL_TRACES_SAMPLER"] == "parentbased_always_on", "the sampler too"


def _mount(service: str, volume: str) -> str:
    """Where `service` mounts the named `volume` (read-only or not)."""
    specs: list[str] = services()[service].get("volumes", [])
    for spec in specs:
        name, _, rest = spec.partition(":")
        if name == volume:
            return rest.removesuffix(":ro")
    raise AssertionError(f"{service} does not mount {volume}")


# The VOLUME each image declares (its Dockerfile, official and stand-in alike).
IMAGE_VOLUMES = {"rabbitmq": "/var/lib/rabbitmq", "postgres": "/var/lib/postgresql/data",
                 "redis": "/data", "datalust/seq": "/data", "jaegertracing/jaeger": "/tmp"}  # noqa: S108


def test_every_volume_an_image_declares_is_mounted_by_name_or_in_memory() -> None:
    """Else compose gives it an unnamed volume, and each `make down` / `make up` leaves one
    more behind (which `make down-volumes` no longer finds)."""
    for name, service in services().items():
        image = str(service.get("image", "")).rpartition(":")[0]
        if (path := IMAGE_VOLUMES.get(image)) is None:
            continue
        mounted = {str(v).partition(":")[2].removesuffix(":ro")
                   for v in service.get("volumes", [])} | set(service.get("tmpfs", []))
        assert path in mounted, f"{name} leaves its image's VOLUME {path} unnamed"


def test_each_database_url_names_a_postgres_of_its_own() -> None:
    seen = set()
    for service in ("order", "payment", "identity"):
        env = env_of(service)
        url = urlsplit(env[f"{service.upper()}_DATABASE_URL"])
        db = services()[url.hostname or ""]
        assert db["image"].startswith("postgres:"), f"{url.hostname} is not PostgreSQL"
        assert service_env(db) == {"POSTGRES_USER": url.username,
                                   "POSTGRES_PASSWORD_FILE": "/run/saga-secrets/password",
                                   "POSTGRES_DB": url.path.lstrip("/")}, url.hostname
        assert url.hostname not in seen, "each service owns its database server"
        seen.add(url.hostname)
        # The database and its service read the one password file the `keys` job writes, on a
        # volume of that database's own: no other service mounts it.
        secret = f"{url.hostname}-secret"
        assert _mount(url.hostname or "", secret) == "/run/saga-secrets"
        written = _mount("keys", secret)
        assert env[f"{service.upper()}_DATABASE_PASSWORD_FILE"] == \
               f"{_mount(service, secret)}/password" == f"{written}/password"
        assert f"{written}/password" in " ".join(services()["keys"]["command"])
        assert services()[url.hostname or ""]["depends_on"]["keys"]["condition"] == \
               "service_completed_successfully"
        others = [name for name in services() if name not in (service, url.hostname, "keys")]
        assert not [name for name in others if secret in str(services()[name].get("volumes"))]


def test_the_compose_file_holds_no_password() -> None:
    """Passwords come from files the `keys` job generates, never a value written here."""
    for line in COMPOSE_FILE.read_text().splitlines():
        code = line.split("#", 1)[0]
        assert not re.search(r"(?i)(PASSWORD|_PASS)\s*:\s*\S", code) or "_FILE" in code, line
        assert not re.search(r"://[^/@\s:]+:[^@/\s]+@", code), line  # user:password@host
    broker = services()["rabbitmq"]
    assert "$$(cat /run/saga-secrets/password)" in " ".join(raw_compose()["services"][
        "rabbitmq"]["command"])
    assert _mount("rabbitmq", "rabbitmq-secret") == "/run/saga-secrets"
    assert broker["depends_on"]["keys"]["condition"] == "service_completed_successfully"
    # Every service uses the broker, identity too (export and erasure go by events): each
    # mounts the file its RABBITMQ_PASSWORD_FILE names.
    for service in native.ALL_SERVICES:
        assert env_of(service)["RABBITMQ_PASSWORD_FILE"] == \
               f"{_mount(service, 'rabbitmq-secret')}/password"
    assert "/run/saga-secrets/rabbitmq/password" in " ".join(services()["keys"]["command"])


def test_redis_keeps_the_kitchen_with_append_only_persistence() -> None:
    redis = services()[urlsplit(env_of("production")["PRODUCTION_REDIS_URL"]).hostname or ""]
    assert redis["image"].startswith("redis:")
    assert " ".join(redis["command"]).find("--appendonly yes") >= 0


def test_rabbitmq_keeps_its_node_name_and_data() -> None:
    for service in SETTINGS:
        assert urlsplit(env_of(service)["RABBITMQ_URL"]).hostname == "rabbitmq"
    broker = services()["rabbitmq"]
    assert broker["image"].startswith("rabbitmq:") and "management" in broker["image"]
    assert broker.get("hostname") == "rabbitmq", "the node name must survive re-creation"


# --- The gateway: the template's upstreams are the services' names and ports ---------------------


def template_vars() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", TEMPLATE.read_text()))


def envsubst_filter() -> re.Pattern[str]:
    return re.compile(env_of("gateway")["NGINX_ENVSUBST_FILTER"])


@pytest.mark.parametrize("service", SETTINGS)
def test_gateway_upstream_is_the_service_name_and_http_port(service: str) -> None:
    """The gateway's upstream group is a file its entrypoint script keeps equal to the service
    name's replicas (gateway/docker-entrypoint.d), with the same server options as native mode."""
    prefix = service.upper()
    gateway = env_of("gateway")
    assert gateway[f"{prefix}_UPSTREAM_SERVERS"] == f"include /etc/nginx/upstreams/{service}.conf;"
    watched = dict(u.split(":") for u in gateway["SAGA_UPSTREAMS"].split())
    host, port = service, watched[service]
    assert "build" in services()[host]
    assert port == env_of(service)[f"{prefix}_HTTP_PORT"]
    assert port == str(SETTINGS[service].model_fields["http_port"].default)
    options = gateway["SAGA_UPSTREAM_OPTIONS"]
    native_servers = native.stack_env({})[f"{prefix}_UPSTREAM_SERVERS"]
    assert native_servers == f"server 127.0.0.1:{port} {options};"  # same options both modes
    script = "./gateway/docker-entrypoint.d/40-saga-upstreams.sh"
    assert f"{script}:/docker-entrypoint.d/40-saga-upstreams.sh:ro" in services()["gateway"][
        "volumes"]
    assert os.access(REPO / script, os.X_OK), "the image's entrypoint runs only executable scripts"


def test_template_variables_are_given_to_nginx_and_pass_its_filter() -> None:
    env, allowed = env_of("gateway"), envsubst_filter()
    needed = template_vars() | set(native.TEMPLATE_VARS) | set(GATEWAY_ANNOUNCED)
    assert not needed - set(env), f"gateway env lacks {sorted(needed - set(env))}"
    refused = sorted(n for n in needed if not allowed.search(n))
    assert not refused, f"NGINX_ENVSUBST_FILTER refuses {refused}"
    # envsubst must leave nginx's own variables and the image's environment alone.
    for other in ("NGINX_VERSION", "NJS_VERSION", "PATH", "HOSTNAME", "NGINX_ENVSUBST_FILTER"):
        assert not allowed.search(other), f"the filter lets envsubst replace ${other}"
    for name, default in GATEWAY_ANNOUNCED.items():
        assert env[name] == default


def test_the_template_renders_completely_with_compose_values() -> None:
    # What the image's 20-envsubst-on-templates.sh does: only names the filter lets through.
    env, allowed = env_of("gateway"), envsubst_filter()
    names = [n for n in env if allowed.search(n)]
    rendered = interpolate_only(TEMPLATE.read_text(), {n: env[n] for n in names})
    assert not re.findall(r"\$\{\w+\}", rendered)
    assert f"listen {env['GATEWAY_LISTEN']};" in rendered
    mounts = services()["gateway"]["volumes"]
    assert "./gateway/templates:/etc/nginx/templates:ro" in mounts


def interpolate_only(text: str, values: dict[str, str]) -> str:
    pattern = "|".join(map(re.escape, values)) or r"(?!)"
    return re.sub(rf"\$(?:\{{({pattern})\}}|({pattern})(?!\w))",
                  lambda m: values[m[1] or m[2]], text)


# --- Compose's shape: healthchecks, dependencies, ports, volumes, one network --------------------


def test_every_container_has_a_healthcheck() -> None:
    missing = sorted(name for name in services() if not has_healthcheck(name) and
                     name not in JOBS)
    assert not missing, f"no healthcheck: {missing}"


def test_every_dependency_has_a_healthcheck_and_is_waited_for() -> None:
    for name, service in services().items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: long depends_on syntax, with conditions"
        for target, how in depends_on.items():
            if target in JOBS:
                assert how["condition"] == "service_completed_successfully", f"{name} -> {target}"
                continue
            assert target in services() and has_healthcheck(target), f"{name} -> {target}"
            optional = how.get("required") is False and how["condition"] == "service_started"
            assert how["condition"] == "service_healthy" or optional, f"{name} -> {target}"


def test_only_the_gateway_and_operator_uis_publish_ports() -> None:
    published = {name: publish_specs(name) for name in services() if publish_specs(name)}
    assert published == PUBLISHED


def test_services_can_be_scaled() -> None:
    for name, service in services().items():
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
    for name in SETTINGS:
        assert not services()[name].get("ports"), f"{name} publishes a port"
        assert "hostname" not in services()[name], f"{name}: replicas would share a hostname"


def test_one_network_and_named_volumes() -> None:
    data = compose()
    assert set(data.get("networks", {})) <= {"default"}
    declared = set(data.get("volumes", {}))
    used = set()
    for name, service in services().items():
        assert "networks" not in service and "network_mode" not in service, name
        for mount in service.get("volumes", []):
            source, target, *mode = mount.split(":")
            if source.startswith((".", "/")):
                assert (REPO / source).exists() and mode == ["ro"], f"{name}: {mount}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add((name, source, target))
        if name in DATA_DIRS:
            assert any(n == name and t == DATA_DIRS[name] for n, _, t in used), name
    assert declared == {source for _, source, _ in used}, "a declared volume is unused"


def test_services_reach_the_collector_over_otlp_http() -> None:
    for service in SETTINGS:
        env = env_of(service)
        assert env["OTEL_SERVICE_NAME"] == service
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        url = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert (url.scheme, url.hostname, url.port) == ("http", "otel-collector", 4318)


def test_make_drives_compose_in_compose_mode() -> None:
    import subprocess

    expected = {"up": "docker compose up -d --build --wait",
                "down": "docker compose -f docker-compose.yml -f docker-compose.ha.yml down",
                "ps": "docker compose ps", "logs": "docker compose logs -f"}
    for target, command in expected.items():
        dry = subprocess.run(["make", "-n", target, "SAGA_MODE=compose"], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=True)
        assert command in dry.stdout, f"make {target}: {dry.stdout}"
    # ... and then, as native mode, until every service answers ready through the gateway
    # (the containers' own health is liveness: Dockerfile)
    for target in ("up", "up-ha"):
        dry = subprocess.run(["make", "-n", target, "SAGA_MODE=compose"], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=True)
        assert "exec -T gateway" in dry.stdout and "/health/$s/ready" in dry.stdout, dry.stdout
        for service in SETTINGS:
            assert service in dry.stdout.split("exec -T gateway", 1)[1], service


def test_interpolation_follows_compose() -> None:
    assert interpolate("${A:-x}|${A-x}|$$A|${B}|$B", {"A": ""}) == "x||$A||"
    assert interpolate("${A:-[1, 2]}", {}) == "[1, 2]"


def test_every_knob_a_test_stack_sets_reaches_compose() -> None:
    """The e2e and chaos stacks set the same knobs in both modes: each one they set is passed on
    by tests/stacks.py and read by docker-compose.yml, so a compose run never falls back to a
    default the native run does not use."""
    from tests.chaos.conftest import KNOBS as CHAOS_KNOBS
    from tests.e2e.conftest import KNOBS as E2E_KNOBS
    from tests.stacks import COMPOSE_KNOBS

    assert not (set(E2E_KNOBS) | set(CHAOS_KNOBS)) - set(COMPOSE_KNOBS)
    text = COMPOSE_FILE.read_text()
    assert [k for k in COMPOSE_KNOBS if "${" + k not in text] == []


def test_no_two_built_services_share_an_image_tag() -> None:
    """Two services that build their image under one tag race for it: the container made from
    the first build is out of date once the second moves the tag, and the next `up` recreates
    it and everything that depends on it (a killed replica brought back took a minute, not
    seconds: every database, the broker and every service restarted)."""
    built = {name for name, service in services().items() if "build" in service}
    overlay = yaml.safe_load((REPO / "tests" / "compose" / "test-stack.yml").read_text())
    for where, tags in (
        ("docker-compose.yml", {n: s.get("image") for n, s in services().items() if n in built}),
        ("test-stack.yml", {n: s.get("image") for n, s in overlay["services"].items()
                            if n in built}),
    ):
        named = [tag for tag in tags.values() if tag]
        assert len(named) == len(set(named)), f"{where}: built services share a tag: {tags}"
