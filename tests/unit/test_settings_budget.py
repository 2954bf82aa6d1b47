"""An early event's retries must outlast the longest its predecessor can be held up.

Events of one order can overtake each other (sagakit.consuming: an early event is retried with
growing delays, then parked). The longest legitimate hold-up of a predecessor is an outbox entry
a killed replica had read but not published: the Redis relay claims it after ``claim_idle_ms``,
looking every ``claim_every_seconds``. A retry schedule shorter than that parks a good event and
strands its order (seen in the chaos set on a loaded machine, with 18 s of retries)."""

import json

import pytest

from sagakit.outbox import RedisStreamOutboxRelay
from sagakit.settings import ServiceSettings
from tests.chaos.conftest import RETRY_DELAYS_MS

RELAY = RedisStreamOutboxRelay
HOLD_UP_MS = RELAY.claim_idle_ms + 1000 * RELAY.claim_every_seconds


@pytest.mark.parametrize(("where", "delays"), [
    ("the services' default", list(ServiceSettings.model_fields["retry_delays_ms"].default)),
    ("the chaos stack's", json.loads(RETRY_DELAYS_MS)),
])
def test_retries_outlast_a_claimed_outbox_entry(where, delays):
    # Retries run one after another; the first attempt came at once.
    assert sum(delays) >= 1.5 * HOLD_UP_MS, f"{where} retry delays {delays}"


def test_the_kitchen_remembers_an_event_longer_than_it_may_wait_parked(monkeypatch):
    """A parked order.received replayed weeks later, after the customer cancelled, must still
    find the cancellation mark (or its own inbox key), or the kitchen cooks a refunded order."""
    from production.settings import ProductionSettings

    monkeypatch.delenv("PRODUCTION_INBOX_TTL_SECONDS", raising=False)
    monkeypatch.setenv("DEAD_LETTER_RETENTION_DAYS", "30")
    assert ProductionSettings().inbox_ttl() > 30 * 86_400
    monkeypatch.setenv("DEAD_LETTER_RETENTION_DAYS", "90")
    assert ProductionSettings().inbox_ttl() > 90 * 86_400
    monkeypatch.setenv("PRODUCTION_INBOX_TTL_SECONDS", str(7 * 86_400))
    with pytest.raises(ValueError, match="DEAD_LETTER_RETENTION_DAYS"):
        ProductionSettings()
