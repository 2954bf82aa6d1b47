"""Every knob of the identity service (``IDENTITY_*``; secrets also as ``*_FILE``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from sagakit.settings import DatabaseSettings


class IdentitySettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore",
                                      populate_by_name=True)

    database_url: str = "postgresql://identity_svc:identity_svc@127.0.0.1:5432/identity"
    db_pool_size: int = 5
    http_port: int = 8004
    # The private key set (JWKS with "d"), newest first: IDENTITY_SIGNING_KEYS or, better,
    # IDENTITY_SIGNING_KEYS_FILE (a Docker secret; the file `make up` writes natively).
    signing_keys_file: str | None = None
    signing_keys: str | None = None
    token_ttl_seconds: int = Field(900, ge=60, le=86_400)
    # GET .../data shows the newest complete export this long before assembling a new one.
    export_reuse_seconds: int = Field(300, ge=0)
    # An export (personal data) is deleted this long after it was asked for.
    export_retention_seconds: int = Field(86_400, ge=60)
    # Password guessing (identity.throttle): attempts on one account checked at once, then the
    # first wait (doubling with each further failure, up to the longest); a count with no
    # attempt for IDENTITY_LOGIN_FORGET_SECONDS is forgotten.
    login_free_attempts: int = Field(5, ge=1)
    login_first_wait_seconds: float = Field(1.0, ge=0)
    login_longest_wait_seconds: float = Field(900.0, ge=0)
    login_forget_seconds: float = Field(86_400.0, ge=60)
    # The development accounts of README "Accounts"; off for anything reachable from outside.
    seed_dev_accounts: bool = True
    # Where the gateway listens (GATEWAY_BIND): with the development accounts on, only loopback.
    gateway_bind: str = Field("127.0.0.1", validation_alias="GATEWAY_BIND")
