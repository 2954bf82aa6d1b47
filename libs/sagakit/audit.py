"""The operator audit: who did what, when, under which request id, and how it ended.

Every operator action (a dead-letter replay or discard, a restock, pausing or resuming the
kitchen line, an erasure requested on a customer's behalf) runs inside :meth:`AuditTrail.action`,
which appends one record when the action ends, with its outcome: ``succeeded``, or ``failed``
with the HTTP status and title the caller got. The actor is the verified token's subject
(:class:`sagakit.auth.Principal`: ``ops-console`` for the operator console), never a name the
caller typed.

Reusing it for a new kind of operator action (fault switches, say) takes two lines in the
route: a parameter ``audit: Audit`` and ``async with audit.action("faults.set", target=name,
detail={...}):`` around the work. The record lands in the service's own store (an
append-only PostgreSQL table, ``operator_audit``, or a Redis stream, ``audit``) and is listed,
newest first, by ``GET /api/v1/ops/<service>/audit`` (:func:`audit_router`), to operators only.

The record is written after the action, not in its transaction: most of these actions are
broker operations (a replay) with no transaction to share. If the audit store is down the
action's answer is an error (the write raises), so an operator never sees a success that left
no record; the action itself may have happened, which the request id in the service's logs
shows.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Protocol

import asyncpg
import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from sagakit import logs
from sagakit.auth import Caller, allow
from sagakit.errors import ApiError
from sagakit.web import JsonRoute

Outcome = Literal["succeeded", "failed"]


class AuditRecord(BaseModel):
    at: datetime
    service: str
    actor: str = Field(description="the token subject of who did it, e.g. ops-console")
    actor_kind: str = Field(description="customer or client")
    action: str = Field(examples=["dead_letter.replay"])
    target: str | None = Field(description="what it was done to: an event id, a sku, ...")
    request_id: str | None
    outcome: Outcome
    detail: dict[str, Any] = Field(default_factory=dict,
                                   description="the action's parameters and, when it failed, "
                                               "the status and title of the error")


class AuditLog(Protocol):
    service: str

    async def append(self, record: AuditRecord) -> None: ...

    async def newest(self, limit: int, action: str | None) -> list[AuditRecord]: ...


class PostgresAuditLog:
    """``operator_audit`` (libs/sagakit/sql/000_sagakit_audit.sql): no update, no delete."""

    def __init__(self, pool: asyncpg.Pool, service: str) -> None:
        self.pool = pool
        self.service = service

    async def append(self, record: AuditRecord) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO operator_audit (at, service, actor, actor_kind, action, target,"
                " request_id, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                record.at, record.service, record.actor, record.actor_kind, record.action,
                record.target, record.request_id, record.outcome, record.detail,
            )

    async def newest(self, limit: int, action: str | None) -> list[AuditRecord]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT at, service, actor, actor_kind, action, target, request_id, outcome,"
                " detail FROM operator_audit WHERE ($2::text IS NULL OR action = $2)"
                " ORDER BY seq DESC LIMIT $1", limit, action,
            )
        return [AuditRecord(**dict(r)) for r in rows]


class RedisAuditLog:
    """A Redis stream, ``audit``: entries are appended (``XADD``), never changed."""

    key = "audit"

    def __init__(self, redis: Redis, service: str) -> None:
        self.redis = redis
        self.service = service

    async def append(self, record: AuditRecord) -> None:
        await self.redis.xadd(self.key, {"record": record.model_dump_json()})

    async def newest(self, limit: int, action: str | None) -> list[AuditRecord]:
        found: list[AuditRecord] = []
        last = "+"
        while len(found) < limit:  # filtered by action here: the stream is one sequence
            entries: Any = await self.redis.xrevrange(self.key, max=last, count=500)
            for entry_id, fields in entries:
                if entry_id == last:
                    continue
                record = AuditRecord.model_validate_json(fields["record"])
                if action is None or record.action == action:
                    found.append(record)
            if len(entries) < 500:
                break
            last = entries[-1][0]
        return found[:limit]


class AuditTrail:
    """The audit of one request: who calls, under which request id, into which log."""

    def __init__(self, log: AuditLog, actor: str, actor_kind: str) -> None:
        self.log = log
        self.actor = actor
        self.actor_kind = actor_kind

    @contextlib.asynccontextmanager
    async def action(self, action: str, *, target: str | None = None,
                     detail: Mapping[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Run the action; record it, succeeded or failed, when it ends.

        Yields the record's ``detail``, to which the action may add what it did (say, the
        ids a replay-all replayed).
        """
        noted: dict[str, Any] = dict(detail or {})
        outcome: Outcome = "failed"
        try:
            yield noted
            outcome = "succeeded"
        except ApiError as exc:
            noted["error"] = {"status": exc.status, "title": exc.title}
            raise
        except Exception as exc:
            noted["error"] = {"status": 500, "title": type(exc).__name__}
            raise
        finally:
            await self.log.append(AuditRecord(
                at=datetime.now(UTC), service=self.log.service, actor=self.actor,
                actor_kind=self.actor_kind, action=action, target=target,
                request_id=logs.request_id_var.get(), outcome=outcome,
                detail=orjson.loads(orjson.dumps(noted, default=str)),
            ))


def audit_log(request: Request) -> AuditLog:
    found: AuditLog | None = getattr(request.app.state, "audit_log", None)
    if found is None:
        raise ApiError(503, "Not ready", "the audit log is not open yet")
    return found


async def audit_trail(request: Request, caller: Caller) -> AuditTrail:
    return AuditTrail(audit_log(request), caller.subject, caller.kind)


# The audit of the request in hand: a route parameter ``audit: Audit``.
Audit = Annotated[AuditTrail, Depends(audit_trail)]


class AuditOut(BaseModel):
    service: str
    records: list[AuditRecord] = Field(description="newest first")


def audit_router(service: str) -> APIRouter:
    """``GET /api/v1/ops/<service>/audit``: this service's operator actions, newest first."""
    router = APIRouter(prefix=f"/api/v1/ops/{service}/audit", tags=["operations"],
                       route_class=JsonRoute)

    @router.get("", response_model=AuditOut, **allow("ops"),
                summary="Operator actions on this service: who, what, when, request id, outcome")
    async def list_audit(
        request: Request,
        limit: Annotated[int, Query(ge=1, le=1000, description="records at most")] = 100,
        action: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_.]+$",
                                            description="only this action")] = None,
    ) -> AuditOut:
        return AuditOut(service=service,
                        records=await audit_log(request).newest(limit, action))

    return router
