"""HTTP for a customer's data: the export (right of access) and the erasure, for the customer
and for an operator acting on a customer's behalf (recorded in the operator audit).

An export is assembled from events (identity.customer_data), so its first ``GET`` answers 202
with what is still missing; asking again shows the same export, and once every service has sent
its part the answer is 200 with the data. An erasure is asked with ``DELETE`` (202) and is
complete once every service has confirmed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field

from identity import customer_data
from sagakit.audit import Audit
from sagakit.auth import Caller, Principal, allow
from sagakit.errors import ApiError
from sagakit.web import JsonRoute

router = APIRouter(prefix="/api/v1/customers", tags=["customer data"], route_class=JsonRoute)
CustomerId = Annotated[UUID, Path(description="the customer's id (their tokens' sub)")]


class RequestStatus(BaseModel):
    id: UUID
    customer_id: UUID
    status: Literal["pending", "complete"]
    requested_at: datetime
    completed_at: datetime | None
    parts_received: list[str]
    parts_missing: list[str] = Field(description="services that have not answered yet")


class DataExport(RequestStatus):
    data: dict[str, Any] | None = Field(
        None, description="once complete: each service's part (identity: the account; order: "
                          "orders; payment: cards, masked, and the ledger; production: none)")


def _own(caller: Principal) -> UUID:
    if caller.kind != "customer":  # as GET /api/v1/customers/me answers a client's token
        raise ApiError(404, "Not found", "This token is a client's, not a customer's; an "
                       "operator uses /api/v1/customers/{customer_id}/...")
    return UUID(caller.subject)


def _unknown(customer_id: UUID) -> ApiError:
    return ApiError(404, "Not found", f"no customer {customer_id}", field="customer_id")


async def _export(request: Request, response: Response, customer_id: UUID,
                  caller: Principal) -> DataExport:
    try:
        found = await customer_data.export(request.app.state.pool, customer_id, caller.subject,
                                           request.app.state.settings.export_reuse_seconds)
    except customer_data.UnknownCustomer:
        raise _unknown(customer_id) from None
    if found["status"] != "complete":
        response.status_code = 202
        response.headers["Retry-After"] = "1"
    return DataExport(**found)


async def _erase(request: Request, response: Response, customer_id: UUID,
                 caller: Principal) -> RequestStatus:
    try:
        found = await customer_data.erase(request.app.state.pool, customer_id, caller.subject)
    except customer_data.UnknownCustomer:
        raise _unknown(customer_id) from None
    response.status_code = 200 if found["status"] == "complete" else 202
    return RequestStatus(**found)


EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Being assembled: ask again (Retry-After)", "model": DataExport}}
ERASE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Asked; complete once every service confirmed", "model": RequestStatus}}


@router.get("/me/data", response_model=DataExport, responses=EXPORT_RESPONSES,
            summary="Everything the shop holds about you (202 while it is being assembled)",
            **allow("orders"))
async def my_data(request: Request, response: Response, caller: Caller) -> DataExport:
    return await _export(request, response, _own(caller), caller)


@router.delete("/me", response_model=RequestStatus, responses=ERASE_RESPONSES,
               summary="Erase your personal data (orders and payments stay, anonymised)",
               **allow("orders"))
async def erase_me(request: Request, response: Response, caller: Caller) -> RequestStatus:
    return await _erase(request, response, _own(caller), caller)


@router.get("/{customer_id}/data", response_model=DataExport,
            responses={**EXPORT_RESPONSES, 404: {"description": "No such customer"}},
            summary="A customer's data, exported on their behalf (audited)", **allow("ops"))
async def customer_data_export(customer_id: CustomerId, request: Request, response: Response,
                               caller: Caller, audit: Audit) -> DataExport:
    async with audit.action("customer.export", target=str(customer_id)) as noted:
        found = await _export(request, response, customer_id, caller)
        noted["status"] = found.status
    return found


@router.delete("/{customer_id}", response_model=RequestStatus,
               responses={**ERASE_RESPONSES, 404: {"description": "No such customer"}},
               summary="Erase a customer's personal data on their behalf (audited)",
               **allow("ops"))
async def erase_customer(customer_id: CustomerId, request: Request, response: Response,
                         caller: Caller, audit: Audit) -> RequestStatus:
    async with audit.action("customer.erase", target=str(customer_id)) as noted:
        found = await _erase(request, response, customer_id, caller)
        noted["erasure_id"] = str(found.id)
    return found


@router.get("/{customer_id}/erasure", response_model=RequestStatus,
            responses={404: {"description": "No erasure was asked for this customer"}},
            summary="Where a customer's erasure stands: which services confirmed",
            **allow("ops"))
async def erasure_status(customer_id: CustomerId, request: Request) -> RequestStatus:
    found = await customer_data.erasure_of(request.app.state.pool, customer_id)
    if found is None:
        raise ApiError(404, "Not found", f"no erasure of customer {customer_id}",
                       field="customer_id")
    return RequestStatus(**found)
