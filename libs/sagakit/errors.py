"""The one error a service raises for a client: :class:`ApiError`.

A module of its own, below everything that raises it (``sagakit.auth``, ``sagakit.admission``,
every service's API) and the web edge that turns it into JSON (``sagakit.web``), so that no
two of them import each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """A client-facing error: its status, a title, and (when one input is to blame) the field.

    ``sagakit.web`` answers it as ``{"type", "title", "status", "detail", "errors": [{"field",
    "message"}]}`` with ``headers`` (say, ``Retry-After``); ``extra`` fields join the body.
    """

    def __init__(
        self, status: int, title: str, detail: str, *, field: str | None = None,
        headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.field, self.extra = (
            status, title, detail, field, extra,
        )
        self.headers = dict(headers or {})
