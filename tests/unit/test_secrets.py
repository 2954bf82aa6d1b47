"""Secrets in both run modes: passwords from files, generated once, and no public gateway with
development credentials (native mode's runner: tests/unit/test_native_config.py)."""

from __future__ import annotations

import stat

import pytest

from identity import app as identity_app
from identity.settings import IdentitySettings
from order.settings import OrderSettings
from sagakit import passwords
from sagakit.settings import with_password


def test_a_password_file_replaces_the_urls_password(tmp_path, monkeypatch):
    secret = tmp_path / "password"
    secret.write_text("s3cr/t:@x\n")
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://order_svc@order-db:5432/orders")
    monkeypatch.setenv("ORDER_DATABASE_PASSWORD_FILE", str(secret))
    settings = OrderSettings()
    assert settings.database_dsn == "postgresql://order_svc:s3cr%2Ft%3A%40x@order-db:5432/orders"
    assert "s3cr" not in settings.database_url  # the URL alone (logged, shown) holds none


def test_without_a_file_the_url_is_used_as_it_is(monkeypatch):
    monkeypatch.delenv("ORDER_DATABASE_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("ORDER_DATABASE_URL", "postgresql://order_svc:pw@127.0.0.1:5432/orders")
    assert OrderSettings().database_dsn == "postgresql://order_svc:pw@127.0.0.1:5432/orders"


def test_an_empty_password_file_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "password").write_text("\n")
    monkeypatch.setenv("ORDER_DATABASE_PASSWORD_FILE", str(tmp_path / "password"))
    with pytest.raises(ValueError, match="empty"):
        _ = OrderSettings().database_dsn


def test_with_password_needs_a_user():
    with pytest.raises(ValueError, match="user"):
        with_password("postgresql://db:5432/orders", "x")


def test_passwords_are_made_once_random_and_readable_by_the_volumes_users(tmp_path, capsys):
    first, second = tmp_path / "order-db" / "password", tmp_path / "payment-db" / "password"
    passwords.main([str(first), str(second)])
    made = first.read_text().strip()
    assert len(made) >= 32 and made != second.read_text().strip()
    assert stat.S_IMODE(first.stat().st_mode) == 0o644
    passwords.main([str(first)])
    assert first.read_text().strip() == made  # kept: its database was created with it
    out = capsys.readouterr().out
    assert "made" in out and "kept" in out and made not in out  # never printed


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "203.0.113.7"])
async def test_the_identity_refuses_to_start_on_a_public_gateway_with_the_dev_accounts(bind):
    """Compose mode's guard (the runner's is check_gateway_settings): the gateway waits for a
    healthy identity, so the stack does not start."""
    app = identity_app.build(IdentitySettings(gateway_bind=bind, seed_dev_accounts=True))
    with pytest.raises(SystemExit, match="refusing to start"):
        async with app.router.lifespan_context(app):
            pass
