"""Native mode's configuration: replicas, gateway upstreams and keys, the template's inputs."""

from __future__ import annotations

import os
import re

import pytest

from deploy import native
from identity.settings import IdentitySettings
from order.settings import OrderSettings
from payment.settings import PaymentSettings
from production.settings import ProductionSettings
from sagakit.settings import ServiceSettings


def test_replicas_are_named_and_ported_by_index():
    env = native.stack_env({"ORDER_REPLICAS": "3", "ORDER_HTTP_PORT": "9001",
                            "ORDER_HTTP_HOST": "0.0.0.0"})
    order = native.replicas("order", env)
    assert [(r.name, r.port, r.address) for r in order] == [
        ("order", 9001, "127.0.0.1:9001"),
        ("order-2", 9011, "127.0.0.1:9011"),
        ("order-3", 9021, "127.0.0.1:9021"),
    ]
    assert order[2].env(env)["ORDER_HTTP_PORT"] == "9021"
    assert [r.name for r in native.replicas("payment", env)] == ["payment"]


def test_the_gateway_gets_one_server_line_per_replica():
    env = native.stack_env({"PRODUCTION_REPLICAS": "2", "PRODUCTION_HTTP_PORT": "9003"})
    assert env["PRODUCTION_UPSTREAM"] == "127.0.0.1:9003 127.0.0.1:9013"
    assert env["PRODUCTION_UPSTREAM_SERVERS"].split("\n    ") == [
        "server 127.0.0.1:9003 max_fails=3 fail_timeout=10s;",
        "server 127.0.0.1:9013 max_fails=3 fail_timeout=10s;",
    ]


def test_an_explicit_upstream_still_wins():
    env = native.stack_env({"ORDER_UPSTREAM": "10.0.0.5:8001 10.0.0.6:8001"})
    assert env["ORDER_UPSTREAM_SERVERS"].count("server 10.0.0.") == 2


def test_an_ipv6_bind_host_is_bracketed_for_nginx():
    env = native.stack_env({"PAYMENT_HTTP_HOST": "::1"})
    assert native.replicas("payment", env)[0].address == "[::1]:8002"


@pytest.mark.parametrize("count", ["0", "-1", "two", "", "²"])
def test_a_bad_replica_count_is_refused(count):
    with pytest.raises(native.StackError, match="ORDER_REPLICAS"):
        native.stack_env({"ORDER_REPLICAS": count})


def test_the_gateway_listens_on_loopback_by_default():
    env = native.stack_env({})
    assert env["GATEWAY_LISTEN"] == "127.0.0.1:8080"
    native.check_gateway_settings(env)
    assert native.stack_env({"GATEWAY_BIND": "::1"})["GATEWAY_LISTEN"] == "[::1]:8080"


REAL_SECRETS = {
    "IDENTITY_SEED_DEV_ACCOUNTS": "false",
    "ORDER_DATABASE_URL": "postgresql://order_svc:Zq8-real@db.internal:5432/orders",
    "PAYMENT_DATABASE_URL": "postgresql://payment_svc:Xk2-real@db.internal:5432/payments",
    "IDENTITY_DATABASE_URL": "postgresql://identity_svc:Vw5-real@db.internal:5432/identity",
    "RABBITMQ_URL": "amqp://saga:Rt7-real@broker.internal:5672/",
}


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "192.0.2.10"])
def test_a_public_gateway_needs_every_real_secret(bind):
    native.check_gateway_settings(native.stack_env({"GATEWAY_BIND": bind, **REAL_SECRETS}))
    for name, why in [("IDENTITY_SEED_DEV_ACCOUNTS", "development accounts"),
                      ("ORDER_DATABASE_URL", "ORDER_DATABASE_URL"),
                      ("PAYMENT_DATABASE_URL", "PAYMENT_DATABASE_URL"),
                      ("IDENTITY_DATABASE_URL", "IDENTITY_DATABASE_URL"),
                      ("RABBITMQ_URL", "guest")]:
        some_missing = {k: v for k, v in REAL_SECRETS.items() if k != name}
        with pytest.raises(native.StackError, match=why):
            native.check_gateway_settings(native.stack_env({"GATEWAY_BIND": bind,
                                                            **some_missing}))
    with pytest.raises(native.StackError, match="IDENTITY_SEED_DEV_ACCOUNTS"):
        native.check_gateway_settings(native.stack_env({"GATEWAY_BIND": bind}))


def test_a_password_file_counts_as_a_real_secret(tmp_path):
    secret = tmp_path / "order-db-password"
    secret.write_text("from-a-file\n")
    env = native.stack_env({"GATEWAY_BIND": "0.0.0.0", **REAL_SECRETS,
                            "ORDER_DATABASE_URL": native.DEFAULTS["ORDER_DATABASE_URL"],
                            "ORDER_DATABASE_PASSWORD_FILE": str(secret)})
    native.check_gateway_settings(env)
    assert native.database_url(env, "ORDER_DATABASE_URL") == \
        "postgresql://order_svc:from-a-file@127.0.0.1:5432/orders"


@pytest.mark.parametrize(("name", "value"), [
    ("GATEWAY_RATE_LIMIT", "1000"),
    ("GATEWAY_RATE_LIMIT", "0r/s"),
    ("GATEWAY_RATE_LIMIT", "10r/h"),
    ("GATEWAY_RATE_BURST", "-1"),
    ("GATEWAY_RATE_BURST", "many"),
    ("GATEWAY_LIST_RATE_LIMIT", "5"),
    ("GATEWAY_LIST_RATE_BURST", "ten"),
    ("GATEWAY_CONN_LIMIT", "0"),
    ("GATEWAY_CLIENT_TIMEOUT", "forever"),
    ("GATEWAY_CLIENT_TIMEOUT", "10s; return 200"),
])
def test_gateway_settings_nginx_would_misread_are_refused(name, value):
    with pytest.raises(native.StackError, match=name):
        native.check_gateway_settings(native.stack_env({name: value}))


def test_the_default_limits_are_sized_to_the_stack_and_rendered():
    """Tens of requests a second per client, lists costed higher, /health counted too."""
    rendered = native.render_template(native.TEMPLATE.read_text(), native.stack_env({}))
    assert "zone=saga_per_client:10m rate=30r/s;" in rendered
    assert "zone=saga_lists_per_client:10m rate=5r/s;" in rendered
    assert "limit_req zone=saga_per_client burst=60 nodelay;" in rendered
    assert "limit_req zone=saga_lists_per_client burst=10 nodelay;" in rendered
    assert "limit_conn saga_conns_per_client 20;" in rendered
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout"):
        assert f"{timeout} 10s;" in rendered
    health = rendered[rendered.index("location = /health {"):]
    assert "limit_req off" not in rendered and "limit_req" not in health.split("}")[0]


def test_the_template_uses_exactly_the_variables_the_runner_renders():
    text = native.TEMPLATE.read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", text))
    assert used == set(native.TEMPLATE_VARS)
    rendered = native.render_template(text, native.stack_env({}))
    assert "${" not in rendered


def test_process_names_sort_gateway_first_then_replicas_in_order():
    names = ["production-2", "order-10", "gateway", "order-2", "payment", "order"]
    assert sorted(names, key=native.process_sort_key) == [
        "gateway", "order", "order-2", "order-10", "payment", "production-2"]


SETTINGS: dict[str, type[ServiceSettings]] = {
    "order": OrderSettings, "payment": PaymentSettings, "production": ProductionSettings,
    "identity": IdentitySettings}


@pytest.mark.parametrize("service", native.ALL_SERVICES)
def test_what_the_runner_passes_is_what_each_service_defaults_to(service, monkeypatch):
    """The runner's defaults come from the settings classes: handed to a service, they change
    nothing it would have chosen itself (a drift here would split native from compose)."""
    settings = SETTINGS[service]
    for name in list(os.environ):
        monkeypatch.delenv(name)
    alone = settings()
    for name, value in native.stack_env({}).items():
        monkeypatch.setenv(name, value)
    given = settings()
    for field in ("rabbitmq_url", "http_host", "http_port", "database_url", "gateway_bind"):
        if field in settings.model_fields:
            assert getattr(given, field) == getattr(alone, field), f"{service}.{field}"
    assert native.replicas(service, native.stack_env({}))[0].port == alone.http_port


def test_natively_an_order_links_to_jaeger_and_seq_only_when_something_is_exported():
    """Native mode exports nothing unless OTEL_EXPORTER_OTLP_ENDPOINT is set: links to a Jaeger
    and a Seq that do not run would lead nowhere, so they are null (the API and the pages)."""
    from order.api import _links

    quiet = native.stack_env({})
    assert quiet["ORDER_JAEGER_UI_URL"] == quiet["ORDER_SEQ_UI_URL"] == ""
    links = _links(OrderSettings(jaeger_ui_url=quiet["ORDER_JAEGER_UI_URL"],
                                 seq_ui_url=quiet["ORDER_SEQ_UI_URL"]), "ab" * 16)
    assert (links.trace, links.logs) == (None, None)
    exporting = native.stack_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert "ORDER_JAEGER_UI_URL" not in exporting  # the settings' default: compose's ports
    links = _links(OrderSettings(), "ab" * 16)
    assert links.trace == f"http://localhost:16686/trace/{'ab' * 16}"
    assert links.logs and links.logs.startswith("http://localhost:5380/")
