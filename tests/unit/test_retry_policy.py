"""Where a failed delivery goes: retry with growing delay, park poison and exhausted events, and
never park because a store is down."""

import errno
import socket
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from sagakit import topology
from sagakit.consuming import Poison, RetryLater, RetryPolicy, is_outage
from sagakit.deadletters import message_id


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, body, **kwargs) -> None:
        self.published.append({"body": body, **kwargs})


def delivery(attempt: int) -> Any:  # stands in for an aio-pika IncomingMessage
    return SimpleNamespace(body=b"{}", headers={"x-attempt": attempt, "ce-type": "t"},
                           message_id="m1", correlation_id="o1", type="t",
                           content_type="application/json")


@pytest.fixture
def policy() -> tuple[RetryPolicy, RecordingBroker]:
    broker = RecordingBroker()
    return RetryPolicy(broker, "order", (100, 500, 2000)), broker  # type: ignore[arg-type]


async def test_a_not_yet_applicable_event_is_retried_with_growing_delay(policy):
    retries, broker = policy
    for attempt, delay in ((1, "100"), (2, "500"), (3, "2000")):
        assert await retries.reroute(delivery(attempt), "order.q", RetryLater("x")) == "retry"
        assert broker.published[-1]["exchange"] is topology.RETRY
        assert broker.published[-1]["headers"]["retry-delay-ms"] == delay
        assert broker.published[-1]["headers"]["x-attempt"] == attempt + 1


async def test_after_the_last_attempt_it_is_parked_with_its_story(policy):
    retries, broker = policy
    assert await retries.reroute(delivery(4), "order.q", RetryLater("still not")) == "parked"
    parked = broker.published[-1]
    assert parked["exchange"] is topology.DEAD_LETTERS and parked["routing_key"] == "order"
    assert parked["headers"]["x-attempts"] == 4
    assert "still not" in parked["headers"]["x-dead-letter-reason"]
    assert parked["headers"]["ce-type"] == "t"


async def test_an_early_event_after_a_long_outage_still_gets_its_own_retries(policy):
    """Retries spent waiting out an outage are not the event's failures: after a long one, an
    event whose predecessor is not applied yet (RetryLater) gets its whole schedule again,
    starting with the shortest delay, rather than being parked at the first "not yet"."""
    retries, broker = policy
    message = delivery(1)
    for _ in range(10):  # a store away for a while: ten retries, the delay growing
        assert await retries.reroute(message, "order.q", ConnectionRefusedError()) == "retry"
        message.headers = broker.published[-1]["headers"]
    assert message.headers["x-attempt"] == 11 and message.headers["x-failures"] == 0
    assert message.headers["retry-delay-ms"] == "2000"
    outcomes = []
    for _ in range(3):  # back, but its predecessor is not applied yet
        outcomes.append(await retries.reroute(message, "order.q", RetryLater("early")))
        message.headers = broker.published[-1]["headers"]
        if outcomes[-1] == "retry":
            assert message.headers["retry-delay-ms"] == ("100", "500", "2000")[len(outcomes) - 1]
    assert outcomes == ["retry", "retry", "retry"]
    assert await retries.reroute(message, "order.q", RetryLater("early")) == "parked"
    assert broker.published[-1]["headers"]["x-attempts"] == 14


async def test_poison_is_parked_at_once(policy):
    retries, broker = policy
    assert await retries.reroute(delivery(1), "order.q", Poison("bad")) == "parked"
    assert broker.published[-1]["headers"]["x-attempts"] == 1


@pytest.mark.parametrize("outage", [
    ConnectionRefusedError(), TimeoutError(), asyncpg.exceptions.TooManyConnectionsError("full"),
    # a compose database killed: its name leaves the network's DNS
    socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
    OSError(errno.EHOSTUNREACH, "Connect call failed"),
    # a PostgreSQL stopping or restarting ends the statements in flight (57P01, 57P02)
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash"),
    # compose: the killed database's address went to another database container as the stack
    # came back, and its server refuses this service's role
    asyncpg.exceptions.InvalidPasswordError('password authentication failed for user "o"'),
])
async def test_a_store_outage_is_retried_for_as_long_as_it_lasts(policy, outage):
    retries, broker = policy
    assert await retries.reroute(delivery(40), "order.q", outage) == "retry"
    assert broker.published[-1]["headers"]["retry-delay-ms"] == "2000"  # the longest delay


async def test_an_error_of_the_work_itself_is_not_an_outage(policy):
    retries, _ = policy
    for error in (OSError(errno.ENOENT, "no such file"), ValueError("bad"), KeyError("x")):
        assert not is_outage(error)
        assert await retries.reroute(delivery(40), "order.q", error) == "parked"


async def test_a_parked_message_expires_after_the_dead_letter_retention():
    broker = RecordingBroker()
    retries = RetryPolicy(broker, "order", (100,), park_seconds=30 * 86_400)  # type: ignore[arg-type]
    assert await retries.reroute(delivery(1), "order.q", Poison("bad")) == "parked"
    assert broker.published[-1]["expiration"] == 30 * 86_400
    assert await retries.reroute(delivery(1), "order.q", RetryLater("x")) == "retry"
    assert broker.published[-1]["expiration"] is None  # a retry is not a parked message


async def test_a_message_with_no_id_is_parked_under_the_name_the_operator_api_shows(policy):
    # Some clients publish without a message id (RabbitMQ's own UI, pika); aiormq's publish
    # would make a random one up, and the operator API would name the message differently
    # from the digest it documents.
    retries, broker = policy
    no_id: Any = SimpleNamespace(body=b"not an event", headers={}, message_id=None,
                                 correlation_id=None, type=None, content_type=None)
    assert await retries.reroute(no_id, "order.q", Poison("no id")) == "parked"
    assert broker.published[-1]["message_id"] == message_id(no_id)
    assert message_id(no_id).startswith("sha256:")
    assert await retries.reroute(delivery(1), "order.q", Poison("bad")) == "parked"
    assert broker.published[-1]["message_id"] == "m1"  # one that has an id keeps it
