"""The operator audit's one primitive: an action is recorded when it ends, with its outcome."""

from __future__ import annotations

import pytest

from sagakit import logs
from sagakit.audit import AuditRecord, AuditTrail
from sagakit.errors import ApiError


class MemoryLog:
    service = "payment"

    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    async def append(self, record: AuditRecord) -> None:
        self.records.append(record)

    async def newest(self, limit: int, action: str | None) -> list[AuditRecord]:
        return self.records[::-1][:limit]


async def test_a_succeeded_action_names_who_what_and_the_request():
    log = MemoryLog()
    logs.request_id_var.set("req-1")
    async with AuditTrail(log, "ops-console", "client").action(
        "dead_letter.replay", target="ev-1", detail={"queue": "q"}
    ) as noted:
        noted["replayed"] = ["ev-1"]
    [record] = log.records
    assert (record.actor, record.action, record.target, record.request_id, record.outcome) == (
        "ops-console", "dead_letter.replay", "ev-1", "req-1", "succeeded")
    assert record.service == "payment"
    assert record.detail == {"queue": "q", "replayed": ["ev-1"]}


async def test_a_refused_action_is_recorded_as_failed_with_what_the_caller_got():
    log = MemoryLog()
    with pytest.raises(ApiError):
        async with AuditTrail(log, "ops-console", "client").action("stock.restock",
                                                                  target="nope"):
            raise ApiError(404, "Unknown product", "no such sku")
    [record] = log.records
    assert record.outcome == "failed"
    assert record.detail["error"] == {"status": 404, "title": "Unknown product"}


async def test_a_crash_is_recorded_too():
    log = MemoryLog()
    with pytest.raises(RuntimeError):
        async with AuditTrail(log, "ops-console", "client").action("line.pause"):
            raise RuntimeError("boom")
    assert log.records[0].outcome == "failed"
    assert log.records[0].detail["error"]["status"] == 500
