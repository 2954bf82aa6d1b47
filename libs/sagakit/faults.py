"""Fault switches: an operator makes the saga misbehave on purpose, at runtime, for everyone.

Like the OpenTelemetry demo's feature flags, they show how the saga copes with a declining
bank, a failing kitchen or a stalled relay, without a redeploy. They are off by default, set
only by an operator (scope ``ops``), kept where every replica reads them (a service's own
PostgreSQL, or Redis for production) and audited: each change appends who (the token's
subject), when, the request id and the old and new values to a history nobody rewrites.

A switch never takes a shortcut around the saga: a service reads it where it makes its own
decision (payment's charge, the kitchen's reservation, the order relay's next batch), so a
decline by fault is an ordinary decline, a kitchen failure an ordinary compensation, and the
money still balances.

Each service describes its switches as one pydantic model whose defaults are "off";
:func:`faults_router` serves ``GET``/``PUT {prefix}/faults`` and ``GET {prefix}/faults/history``
for it. A PUT changes the fields it names and keeps the others (so a page can flip one switch).
"""


import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, create_model
from redis.asyncio import Redis
from redis.exceptions import WatchError

from sagakit import logs, units
from sagakit.audit import Audit
from sagakit.auth import Caller, allow
from sagakit.web import JsonRoute


@dataclass(frozen=True)
class FaultSetting:
    """The switches now, and the last change (None while nobody ever changed them)."""

    values: dict[str, Any]
    changed_by: str | None = None
    changed_at: datetime | None = None


class FaultChange(BaseModel):
    """One entry of the audit trail."""

    old: dict[str, Any]
    new: dict[str, Any]
    changed_by: str = Field(description="the subject of the operator's token")
    request_id: str | None = Field(None, description="the X-Request-ID of the change")
    changed_at: datetime


class FaultStore(Protocol):
    async def read(self) -> FaultSetting: ...

    async def change(self, values: Mapping[str, Any], *, who: str,
                     request_id: str | None) -> FaultSetting: ...

    async def history(self, limit: int) -> list[FaultChange]: ...


class PostgresFaultStore:
    """Switches in the service's PostgreSQL (sagakit/sql/000_faults.sql)."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], defaults: Mapping[str, Any]) -> None:
        self._pool = pool
        self.defaults = dict(defaults)

    async def read(self) -> FaultSetting:
        async with self._pool().acquire() as conn:
            row = await conn.fetchrow("SELECT value, changed_by, changed_at FROM fault_switches")
        if row is None:
            return FaultSetting(dict(self.defaults))
        return FaultSetting({**self.defaults, **row["value"]}, row["changed_by"],
                            row["changed_at"])

    def condition(self, switch: str) -> str:
        """An SQL expression true while the boolean ``switch`` is on, for a statement of the
        service's own to test in the same round trip (the order relay's next batch)."""
        if not isinstance(self.defaults.get(switch), bool):
            raise TypeError(f"{switch} is not a boolean switch of this store")
        return f"SELECT (value->>'{switch}')::boolean FROM fault_switches"

    async def change(self, values: Mapping[str, Any], *, who: str,
                     request_id: str | None) -> FaultSetting:
        # One transaction and the row locked: two operators at once are two audited changes,
        # each from the value the other left.
        async with self._pool().acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO fault_switches (id) VALUES (true)"
                               " ON CONFLICT DO NOTHING")
            row = await conn.fetchrow(
                "SELECT value, changed_by, changed_at FROM fault_switches FOR UPDATE")
            old = {**self.defaults, **row["value"]}
            new = {**old, **values}
            if new == old:
                return FaultSetting(old, row["changed_by"], row["changed_at"])
            at = await conn.fetchval(
                "WITH noted AS (INSERT INTO fault_changes (old, new, changed_by, request_id)"
                " VALUES ($1, $2, $3, $4) RETURNING changed_at)"
                " UPDATE fault_switches SET value = $2, changed_by = $3, request_id = $4,"
                " changed_at = (SELECT changed_at FROM noted) RETURNING changed_at",
                old, new, who, request_id)
        units.wake()  # a relay paused by a switch (relay_paused) looks again at once
        return FaultSetting(new, who, at)

    async def history(self, limit: int) -> list[FaultChange]:
        async with self._pool().acquire() as conn:
            rows = await conn.fetch(
                "SELECT old, new, changed_by, request_id, changed_at FROM fault_changes"
                " ORDER BY seq DESC LIMIT $1", limit)
        return [FaultChange(**dict(r)) for r in rows]


class RedisFaultStore:
    """Switches in a Redis hash, their history in an append-only list (never trimmed)."""

    def __init__(self, redis: Redis, defaults: Mapping[str, Any], key: str = "faults") -> None:
        self.redis = redis
        self.defaults = dict(defaults)
        self.key, self.history_key = key, f"{key}:history"

    def _setting(self, raw: Mapping[Any, Any]) -> FaultSetting:
        raw = {_text(k): _text(v) for k, v in raw.items()}
        if not raw.get("value"):
            return FaultSetting(dict(self.defaults))
        return FaultSetting({**self.defaults, **json.loads(raw["value"])}, raw.get("changed_by"),
                            datetime.fromisoformat(raw["changed_at"]))

    async def read(self) -> FaultSetting:
        return self._setting(await self.redis.hgetall(self.key))

    async def change(self, values: Mapping[str, Any], *, who: str,
                     request_id: str | None) -> FaultSetting:
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:  # optimistic: WATCH, read, MULTI/EXEC; again if another change won
                try:
                    await pipe.watch(self.key)
                    current = self._setting(await pipe.hgetall(self.key))
                    new = {**current.values, **values}
                    if new == current.values:
                        return current
                    at = datetime.now(UTC)
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                    pipe.hset(self.key, mapping={"value": json.dumps(new), "changed_by": who,
                                                 "changed_at": at.isoformat()})
                    pipe.rpush(self.history_key, FaultChange(
                        old=current.values, new=new, changed_by=who, request_id=request_id,
                        changed_at=at).model_dump_json())
                    await pipe.execute()
                    return FaultSetting(new, who, at)
                except WatchError:
                    continue

    async def history(self, limit: int) -> list[FaultChange]:
        raw = await self.redis.lrange(self.history_key, -limit, -1)
        return [FaultChange.model_validate_json(entry) for entry in reversed(raw)]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def faults_router(prefix: str, switches: type[BaseModel],
                  store: Callable[[Request], FaultStore], effects: str) -> APIRouter:
    """``GET``/``PUT {prefix}/faults`` and ``GET {prefix}/faults/history``, operators only.

    ``switches``: the model of the service's switches, each field's default meaning "off";
    ``effects``: what they do, for the OpenAPI document.
    """
    state = create_model(
        f"{switches.__name__}State", __base__=switches,
        changed_by=(str | None, Field(None, description="who changed them last (token subject)")),
        changed_at=(datetime | None, Field(None, description="when (null: never changed)")),
    )
    router = APIRouter(prefix=prefix, tags=["faults"], route_class=JsonRoute)

    def out(setting: FaultSetting) -> Any:
        return state(**setting.values, changed_by=setting.changed_by,
                     changed_at=setting.changed_at)

    @router.get("/faults", response_model=state, summary="The fault switches now",
                description=effects, **allow("ops"))
    async def read_faults(request: Request) -> Any:
        return out(await store(request).read())

    @router.put("/faults", response_model=state, summary="Set fault switches (audited)",
                description=effects + " A field left out keeps its value.",
                responses={422: {"description": "A value out of range; `errors` names it"}},
                **allow("ops"))
    async def set_faults(body: switches, request: Request, caller: Caller,  # type: ignore[valid-type]
                         audit: Audit) -> Any:
        given: BaseModel = body
        changed = given.model_dump(include=given.model_fields_set)
        # Two records, each for its reader: the switches' own history (old -> new values, what
        # the operator view shows) and the service's operator audit (every operator action).
        async with audit.action("faults.set", target=prefix.rsplit("/", 1)[-1], detail=changed):
            setting = await store(request).change(changed, who=caller.subject,
                                                  request_id=logs.request_id_var.get())
        return out(setting)

    @router.get("/faults/history", response_model=list[FaultChange],
                summary="Every change of the fault switches, newest first", **allow("ops"))
    async def fault_history(
        request: Request, limit: int = Query(100, ge=1, le=1000),
    ) -> list[FaultChange]:
        return await store(request).history(limit)

    return router
