"""Every knob of the payment service, read from the environment (``PAYMENT_*`` + shared names)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from sagakit.settings import DatabaseSettings


class PaymentSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://payment_svc:payment_svc@127.0.0.1:5432/payments"
    db_pool_size: int = 10
    http_port: int = 8002
