"""Every knob of the production service, read from the environment (``PRODUCTION_*`` + shared)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from sagakit.settings import ServiceSettings

# The order service's menu (services/order/order/migrations/002_menu.sql); the risotto is scarce
# on purpose, so the out-of-stock compensation can be seen without a load test.
MENU_STOCK = {
    "burger-classic": 2000,
    "burger-veggie": 2000,
    "pizza-margherita": 2000,
    "salad-caesar": 2000,
    "fries": 2000,
    "lemonade": 2000,
    "brownie": 2000,
    "truffle-risotto": 5,
}


class ProductionSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="PRODUCTION_", extra="ignore", populate_by_name=True
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    http_port: int = 8003
    # How long a cook takes per ticket; 0 for tests and benchmarks.
    preparation_seconds: float = Field(1.0, ge=0)
    # Cooks working at once, per replica: each is a coroutine waiting on Redis, not a thread,
    # so the line's pace (kitchen_workers / preparation_seconds tickets a second, 16/s by
    # default) is the shop's choice, not the machine's limit.
    kitchen_workers: int = Field(16, ge=1)
    # A ticket a cook held without finishing is taken over after max(this, 3 x preparation):
    # long enough that its cook cannot still be at it.
    kitchen_reclaim_seconds: float = Field(30.0, gt=0)
    # Stock written at start for SKUs the store does not know yet (a restart never resets stock).
    # JSON in the environment: PRODUCTION_SEED_STOCK='{"fries": 100}'.
    seed_stock: dict[str, int] = Field(default_factory=lambda: dict(MENU_STOCK))
    # How long a consumed event id, and an order's cancellation mark, are remembered: longer
    # than a parked event may wait for its replay (DEAD_LETTER_RETENTION_DAYS), or a paid
    # order's order.received replayed weeks later, after the customer cancelled, would find
    # neither and cook for a refunded order. None: that retention and a day.
    inbox_ttl_seconds: int | None = Field(None, ge=60)

    def inbox_ttl(self) -> int:
        return self.inbox_ttl_seconds or (self.dead_letter_retention_days + 1) * 86_400

    @model_validator(mode="after")
    def _outlive_dead_letters(self) -> ProductionSettings:
        if self.inbox_ttl_seconds is not None and \
                self.inbox_ttl_seconds <= self.dead_letter_retention_days * 86_400:
            raise ValueError(
                f"PRODUCTION_INBOX_TTL_SECONDS ({self.inbox_ttl_seconds}) must be longer than "
                f"DEAD_LETTER_RETENTION_DAYS ({self.dead_letter_retention_days} days): a "
                "parked event replayed later would be applied again")
        return self
