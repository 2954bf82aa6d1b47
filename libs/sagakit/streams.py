"""Redis streams read by consumer groups: the one way a group is created.

The outbox relay (sagakit.outbox.RedisStreamOutboxRelay) and the kitchen's cooks
(production.store) both read a stream through a consumer group; each creates its group when it
starts, and every replica does so, so creating an existing group is not an error.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError


async def ensure_group(redis: Redis, stream: str, group: str) -> None:
    """Create ``group`` on ``stream`` (and the stream, if it does not exist yet), reading from
    the stream's first entry; a group that exists already is left as it is."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
