"""Native mode's configuration: replicas, gateway upstreams and keys, the template's inputs."""

from __future__ import annotations

import re

import pytest

from deploy import native


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


def test_the_defaults_are_the_development_key_and_limits_no_benchmark_meets():
    env = native.stack_env({})
    assert env["GATEWAY_API_KEYS"] == "dev-key-change-me"
    assert (env["GATEWAY_RATE_LIMIT"], env["GATEWAY_RATE_BURST"]) == ("1000r/s", "2000")
    native.check_gateway_settings(env)


@pytest.mark.parametrize(("name", "value"), [
    ("GATEWAY_API_KEYS", ""),
    ("GATEWAY_API_KEYS", "good-key|"),
    ("GATEWAY_API_KEYS", "good-key||other"),
    ("GATEWAY_API_KEYS", "a.b"),  # a regex wildcard in nginx
    ("GATEWAY_API_KEYS", "key+more"),
    ("GATEWAY_API_KEYS", "with space"),
    ("GATEWAY_API_KEYS", 'quote"d'),
    ("GATEWAY_RATE_LIMIT", "1000"),
    ("GATEWAY_RATE_LIMIT", "0r/s"),
    ("GATEWAY_RATE_LIMIT", "10r/h"),
    ("GATEWAY_RATE_BURST", "-1"),
    ("GATEWAY_RATE_BURST", "many"),
])
def test_gateway_settings_nginx_would_misread_are_refused(name, value):
    with pytest.raises(native.StackError, match=name):
        native.check_gateway_settings(native.stack_env({name: value}))


def test_keys_of_the_allowed_characters_pass():
    env = native.stack_env({"GATEWAY_API_KEYS": "Ab9_~-x|k2-7f3c9e1d8b6a4f2e0c5b7a9d1e3f5a7c"})
    native.check_gateway_settings(env)


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
