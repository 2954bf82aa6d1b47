"""Every knob of the order service, read from the environment (``ORDER_*`` + shared names)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sagakit.settings import DatabaseSettings


class OrderSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDER_", extra="ignore", populate_by_name=True)

    database_url: str = "postgresql://order_svc:order_svc@127.0.0.1:5432/orders"
    db_pool_size: int = 10
    http_port: int = 8001
    currency: str = "EUR"
    # How long POST /orders waits for a just-created card token to be announced by payment.
    token_wait_seconds: float = 2.0
    # GET /api/v1/orders/{id}/events: open streams one process serves at most (beyond: 503), and
    # how often an idle stream sends a comment line so proxies and clients know it is alive.
    max_event_streams: int = Field(200, ge=1)
    event_stream_heartbeat_seconds: float = Field(15.0, gt=0)
    # Where people look at an order's trace and logs: the API links each order there.
    jaeger_ui_url: str = "http://localhost:16686"
    seq_ui_url: str = "http://localhost:5380"
    # Webhooks (order.webhooks, order.callbacks). The allow-list of callback hosts, comma
    # separated: `hooks.example.com`, `*.example.com`, `http://127.0.0.1` (plain http, for a
    # receiver in development). Empty (the default): an order with a callback_url is refused.
    webhook_allowed_hosts: str = Field("", validation_alias="WEBHOOK_ALLOWED_HOSTS")
    # Attempts per delivery before it is parked for an operator; the first retry waits about
    # this long, each next one twice as long (with jitter), at most the max; one attempt's
    # timeout.
    webhook_max_attempts: int = Field(8, ge=1, le=100, validation_alias="WEBHOOK_MAX_ATTEMPTS")
    webhook_backoff_seconds: float = Field(2.0, gt=0, validation_alias="WEBHOOK_BACKOFF_SECONDS")
    webhook_backoff_max_seconds: float = Field(
        3600.0, gt=0, validation_alias="WEBHOOK_BACKOFF_MAX_SECONDS")
    # After a rotation of a customer's webhook secret, how long the one it replaced still signs
    # (beside the new one), for their receiver to switch.
    webhook_secret_overlap_hours: float = Field(
        24.0, ge=0, le=720, validation_alias="WEBHOOK_SECRET_OVERLAP_HOURS")
    # Admission control (sagakit.admission): POST /orders answers 503 + Retry-After while more
    # orders than this wait to start (pending_payment, paid, or received: waiting for a cook).
    # The default is about 30 s of the default kitchen's work (16 cooks, 1 s a ticket) and 5 s
    # of the machine's at the rate measured on two cores (docs/performance.md): well above what
    # a healthy stack holds at a pace it keeps up with, reached when a hop or the kitchen falls
    # behind or is down.
    admission_max_waiting: int = Field(500, ge=1)
    admission_retry_after_seconds: int = Field(2, ge=1, le=300)
    webhook_timeout_seconds: float = Field(
        5.0, gt=0, le=30, validation_alias="WEBHOOK_TIMEOUT_SECONDS")
