"""Access tokens for the tests, from a stack's token endpoint, as any client would get them.

The development accounts (README "Accounts") are seeded by every stack the tests start:
customers Ana and Bob, the operator client ``ops-console`` and the machine client ``loadgen``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Account:
    role: str  # anonymous, customer, operator, machine
    form: dict[str, str]

    def token(self, base_url: str, timeout: float = 60.0) -> str:
        """A fresh access token (retried while the identity service starts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.post(f"{base_url}/api/v1/auth/token", data=self.form, timeout=10)
                if response.status_code == 200:
                    return str(response.json()["access_token"])
                last: object = f"{response.status_code} {response.text}"
            except httpx.TransportError as exc:
                last = exc
            if time.monotonic() > deadline:
                who = self.form.get("username") or self.form.get("client_id")
                raise AssertionError(f"no token for {who}: {last}")
            time.sleep(0.5)


ANA = Account("customer", {"grant_type": "password", "username": "ana@example.com",
                           "password": "ana-dev-password"})
BOB = Account("customer", {"grant_type": "password", "username": "bob@example.com",
                           "password": "bob-dev-password"})
OPERATOR = Account("operator", {"grant_type": "client_credentials", "client_id": "ops-console",
                                "client_secret": "ops-dev-secret"})
MACHINE = Account("machine", {"grant_type": "client_credentials", "client_id": "loadgen",
                              "client_secret": "loadgen-dev-secret"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
