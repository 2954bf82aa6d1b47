"""The production service's HTTP API: the kitchen view and the stock count. No business rules.

A restock and a pause or resume of the line are operator actions, recorded in the operator
audit (sagakit.audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from production import service
from production.domain import Ticket, TicketStatus
from production.store import ProductionStore
from sagakit.audit import Audit
from sagakit.auth import allow
from sagakit.errors import ApiError
from sagakit.text import Text
from sagakit.web import JsonRoute

# The kitchen, its stock and its tickets are the operators' (scope ops), reads included.
OPS = allow("ops")
router = APIRouter(prefix="/api/v1/production", route_class=JsonRoute)

MAX_UNITS = 1_000_000
# A sku as the order service takes it (order.schemas.ItemIn): visible text, 1 to 64 characters.
Sku = Annotated[Text, Path(min_length=1, max_length=64, examples=["burger-classic"])]


class StockOut(BaseModel):
    sku: str
    available: int


class Restock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Stock is taken when a ticket is queued, not when it is cooked: units already held for
    # queued tickets are on the shelf but no longer available. A manager who counts the shelf
    # subtracts what the queue holds (GET /api/v1/production/queue), or would sell them twice.
    available: StrictInt = Field(ge=0, le=MAX_UNITS, examples=[120],
                                 description="units free to sell from now on (replaces the "
                                 "count): on the shelf, less those held for queued tickets")


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paused: StrictBool = Field(description="true: cooks start no new ticket (one in the pan is "
                               "finished); queued tickets wait, and can still be cancelled. "
                               "They count toward the order service's admission bound: past "
                               "it, new orders get 503 until the line resumes")


class TicketLineOut(BaseModel):
    sku: str
    name: str
    quantity: int


class TicketOut(BaseModel):
    ticket_id: UUID
    order_id: UUID
    status: TicketStatus
    lines: list[TicketLineOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancelled_at: datetime | None


def _store(request: Request) -> ProductionStore:
    store: ProductionStore = request.app.state.store
    return store


def _unknown_sku(sku: str) -> ApiError:
    return ApiError(404, "Unknown product", f"the kitchen does not stock '{sku}'", field="sku")


def _view(ticket: Ticket) -> TicketOut:
    return TicketOut(
        ticket_id=ticket.id, order_id=ticket.order_id, status=ticket.status,
        lines=[TicketLineOut(sku=x.sku, name=x.name, quantity=x.quantity) for x in ticket.lines],
        created_at=ticket.created_at, started_at=ticket.started_at,
        finished_at=ticket.finished_at, cancelled_at=ticket.cancelled_at,
    )


@router.get("/stock", response_model=list[StockOut], tags=["stock"],
            summary="Units available of every product, by sku", **OPS)
async def list_stock(request: Request) -> list[StockOut]:
    levels = await _store(request).stock_levels()
    return [StockOut(sku=sku, available=units) for sku, units in sorted(levels.items())]


@router.get("/stock/{sku}", response_model=StockOut, tags=["stock"],
            summary="Units available of one product",
            responses={404: {"description": "The kitchen does not stock this sku"}}, **OPS)
async def get_stock(sku: Sku, request: Request) -> StockOut:
    units = await _store(request).stock_of(sku)
    if units is None:
        raise _unknown_sku(sku)
    return StockOut(sku=sku, available=units)


@router.put("/stock/{sku}", response_model=StockOut, tags=["stock"],
            summary="Restock: set the units available of a product after a count",
            responses={404: {"description": "The kitchen does not stock this sku"},
                       422: {"description": "Invalid count; `errors` names the field"}}, **OPS)
async def restock(sku: Sku, body: Restock, request: Request, audit: Audit) -> StockOut:
    async with audit.action("stock.restock", target=sku, detail={"available": body.available}):
        try:
            await service.restock(_store(request), sku, body.available)
        except service.UnknownSku:
            raise _unknown_sku(sku) from None
    return StockOut(sku=sku, available=body.available)


@router.get("/line", response_model=Line, tags=["kitchen"],
            summary="Whether the kitchen line is paused", **OPS)
async def get_line(request: Request) -> Line:
    return Line(paused=await _store(request).line_paused())


@router.put("/line", response_model=Line, tags=["kitchen"],
            summary="Pause the kitchen line, or let it run again",
            responses={422: {"description": "Invalid body; `errors` names the field"}}, **OPS)
async def set_line(body: Line, request: Request, audit: Audit) -> Line:
    async with audit.action("line.pause" if body.paused else "line.resume", target="line"):
        await service.pause_line(_store(request), body.paused)
    return body


@router.get("/queue", response_model=list[TicketOut], tags=["kitchen"],
            summary="The kitchen view: tickets, newest first", **OPS)
async def list_queue(
    request: Request,
    status: Annotated[TicketStatus | None, Query(description="only tickets in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[TicketOut]:
    return [_view(t) for t in await _store(request).tickets(status, limit)]


@router.get("/tickets/{ticket_id}", response_model=TicketOut, tags=["kitchen"],
            summary="One ticket: its lines and when it was queued, started, finished",
            responses={404: {"description": "No such ticket"}}, **OPS)
async def get_ticket(ticket_id: UUID, request: Request) -> TicketOut:
    ticket = await _store(request).ticket(ticket_id)
    if ticket is None:
        raise ApiError(404, "Ticket not found", f"no ticket with id {ticket_id}",
                       field="ticket_id")
    return _view(ticket)
