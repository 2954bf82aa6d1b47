"""Settings every service shares. Each service subclasses it with its own env prefix."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Shared knobs; names are unprefixed because every service reads the same value."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", validation_alias="RABBITMQ_URL"
    )
    # A file holding the broker password, replacing RABBITMQ_URL's (compose: the `keys` job's).
    rabbitmq_password_file: str | None = Field(None, validation_alias="RABBITMQ_PASSWORD_FILE")
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL")
    # Growing delays (ms) between attempts of an event whose handler failed; after the last,
    # the event is parked in the service's dead-letter queue, unless the failure is a store
    # or broker that is away (sagakit.consuming.OUTAGE): that is retried at the last delay for
    # as long as the outage lasts.
    retry_delays_ms: tuple[int, ...] = Field(
        (100, 500, 2_000, 10_000, 30_000, 60_000), min_length=1,
        validation_alias="RETRY_DELAYS_MS"
    )
    # Unacknowledged deliveries a consumer may hold at once.
    prefetch: int = Field(32, ge=1, validation_alias="RABBITMQ_PREFETCH")
    # The identity's public key set: the JWKS itself, or a file holding it (the one `make up`
    # writes natively, a volume in compose). sagakit.auth reads these same variables itself
    # (it also serves code with no settings object); they are here so that this class lists
    # every variable a service reads.
    auth_jwks_file: str | None = Field(None, validation_alias="AUTH_JWKS_FILE")
    auth_jwks: str | None = Field(None, validation_alias="AUTH_JWKS")
    # How long the event archive keeps an event (sagakit.archive); SECURITY.md states why.
    archive_retention_days: int = Field(400, ge=1, validation_alias="ARCHIVE_RETENTION_DAYS")
    # How often a PostgreSQL outbox relay looks for events no wake-up announced (sagakit.units):
    # a replica's that died between commit and publish, an operator's SQL. (The kitchen's Redis
    # relay blocks on its stream instead: sagakit.outbox.RedisStreamOutboxRelay.)
    outbox_sweep_seconds: float = Field(1.0, gt=0, validation_alias="OUTBOX_SWEEP_SECONDS")
    # How often the order service looks for erasures whose customer's sagas have ended.
    sweep_seconds: float = Field(5.0, gt=0, validation_alias="SWEEP_SECONDS")
    # Retention (SECURITY.md): personal data older than this is anonymised by each service's
    # retention sweep, which runs this often (it also prunes the event archive).
    personal_data_retention_days: int = Field(
        730, ge=0, validation_alias="PERSONAL_DATA_RETENTION_DAYS")
    retention_sweep_seconds: float = Field(3600.0, gt=0,
                                           validation_alias="RETENTION_SWEEP_SECONDS")
    # Parked dead letters expire after this (a parked customer-data answer holds personal data).
    dead_letter_retention_days: int = Field(30, ge=1, validation_alias="DEAD_LETTER_RETENTION_DAYS")
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    @property
    def rabbitmq_dsn(self) -> str:
        """The URL to connect to the broker with: its password from the file if one is set."""
        return _with_password_file(self.rabbitmq_url, self.rabbitmq_password_file)


def with_password(url: str, password: str) -> str:
    """``url`` with its password replaced (quoted for a URL): ``postgresql://role:<pw>@host/db``."""
    parts = urlsplit(url)
    if not parts.username:
        raise ValueError(f"a password needs a user in the URL: {parts.hostname}")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def read_password_file(path: str) -> str:
    """A password file's content (a Docker secret, a file the `keys` job wrote), stripped."""
    password = Path(path).read_text(encoding="utf-8").strip()
    if not password:
        raise ValueError(f"{path} is empty")
    return password


def _with_password_file(url: str, path: str | None) -> str:
    return with_password(url, read_password_file(path)) if path else url


class DatabaseSettings(ServiceSettings):
    """A service with a PostgreSQL database of its own: its URL, and its password from a file.

    ``<PREFIX>DATABASE_URL`` may carry everything, the password included (native mode's
    development default). ``<PREFIX>DATABASE_PASSWORD_FILE``, when set, replaces that password
    with the file's: compose hands each service the random password its database was created
    with (docker-compose.yml, the `keys` job), so no password is written in the compose file.
    Connect with :attr:`database_dsn`, which reads the file when asked (at start).
    """

    database_url: str
    database_password_file: str | None = None
    db_pool_size: int = 10

    @property
    def database_dsn(self) -> str:
        """The URL to connect with: ``database_url``, its password from the file if one is set."""
        return _with_password_file(self.database_url, self.database_password_file)
