"""Settings every service shares. Each service subclasses it with its own env prefix."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Shared knobs; names are unprefixed because every service reads the same value."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", validation_alias="RABBITMQ_URL"
    )
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    # Growing delays (ms) between attempts of an event whose handler failed; after the last,
    # the event is parked in the service's dead-letter queue.
    retry_delays_ms: tuple[int, ...] = Field(
        (100, 500, 2_000, 10_000, 30_000, 60_000), validation_alias="RETRY_DELAYS_MS"
    )
    # Unacknowledged deliveries a consumer may hold at once.
    prefetch: int = Field(32, ge=1, validation_alias="RABBITMQ_PREFETCH")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
