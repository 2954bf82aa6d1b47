"""Every knob of the order service, read from the environment (``ORDER_*`` + shared names)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from sagakit.settings import ServiceSettings


class OrderSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://order_svc:order_svc@127.0.0.1:5432/orders"
    db_pool_size: int = 10
    http_port: int = 8001
    currency: str = "EUR"
    # How long POST /orders waits for a just-created card token to be announced by payment.
    token_wait_seconds: float = 2.0
    # Where people look at an order's trace and logs: the API links each order there.
    jaeger_ui_url: str = "http://localhost:16686"
    seq_ui_url: str = "http://localhost:5380"
