"""Typed settings, one object per process.

Values come from (highest priority first) explicit arguments, ``TELERAD_…`` environment variables
(``__`` separates nested sections, e.g. ``TELERAD_OBJECTS__BACKEND=s3``), an optional TOML file
(``TELERAD_CONFIG=/etc/telerad.toml`` or ``--config``), then the embedded defaults: data directory
``./telerad-data``, SQLite catalog, filesystem object store, DICOM port 11112, HTTP port 8080.

Nothing here runs at import time; the entry point builds :class:`Settings` and passes it down.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class DatabaseSettings(BaseModel):
    """Catalog, worklist and reports database (SQLAlchemy URL)."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<data_dir>/telerad.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db",
    )
    pool_size: int = Field(default=10, ge=1, le=200)


class ObjectStoreSettings(BaseModel):
    """Where DICOM objects are kept."""

    backend: Literal["filesystem", "s3"] = "filesystem"
    path: Path | None = Field(
        default=None, description="filesystem root; default <data_dir>/objects"
    )
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "telerad"
    s3_secure: bool = True
    s3_region: str | None = None


class HttpSettings(BaseModel):
    """The central API's listener."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="base URL clients see, for RetrieveURL"
    )
    max_request_bytes: int = Field(default=2 * 1024**3, ge=1024)
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        description="HTTP worker processes sharing the port; 0 = one per core",
    )

    def worker_count(self) -> int:
        """The number of HTTP worker processes to run (``workers``, or one per core)."""
        return self.workers or max(os.cpu_count() or 1, 1)


class DicomSettings(BaseModel):
    """The DICOM listener of the gateway (PS3.8 upper layer, optional TLS per PS3.15 Annex B)."""

    ae_title: str = Field(default="TELERAD", min_length=1, max_length=16)
    host: str = "0.0.0.0"  # noqa: S104 - modalities are on the hospital network
    port: int = Field(default=11112, ge=1, le=65535)
    max_pdu: int = Field(
        default=4 * 1024 * 1024, ge=0, description="largest PDU we accept (0 = unlimited)"
    )
    workers: int = Field(
        default=0, ge=0, le=64, description="SCP processes sharing the port; 0 = one per core"
    )
    max_associations: int = Field(default=64, ge=1, le=1000)
    acse_timeout: float = Field(
        default=10.0, gt=0, description="seconds to wait for an association request/release"
    )
    network_timeout: float = Field(
        default=60.0, gt=0, description="seconds a silent connection is kept (mid-PDU stalls)"
    )
    dimse_timeout: float = Field(default=60.0, gt=0)
    tls_certificate: Path | None = Field(default=None, description="PEM certificate: TLS on")
    tls_private_key: Path | None = None
    tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle: modalities must present a certificate it signed"
    )


class ModalityAddress(BaseModel):
    """A modality allowed to send, and where Storage Commitment replies may reach it."""

    ae_title: str = Field(min_length=1, max_length=16)
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)


class GatewaySettings(BaseModel):
    """The county gateway: spool, outbox, forwarder to the centre, edge completeness."""

    centre_url: str | None = Field(
        default=None, description="the centre's base URL; `serve` uses its own loopback URL"
    )
    site_token: SecretStr | None = Field(default=None, description="the site's gateway token")
    spool_path: Path | None = Field(default=None, description="default <data_dir>/gateway")
    min_free_bytes: int = Field(
        default=512 * 1024 * 1024, ge=0, description="below this free space C-STORE gets 0xA700"
    )
    modalities: list[ModalityAddress] = Field(
        default_factory=list, description="allowed calling AE titles; empty = ask the centre"
    )
    accept_any_ae: bool = Field(
        default=False, description="development mode: accept every calling AE title"
    )
    stable_seconds: float = Field(default=30.0, gt=0, description="quiet time before a manifest")
    batch_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)
    parallel: int = Field(default=3, ge=1, le=32, description="STOW requests in flight")
    yield_seconds: float = Field(
        default=0.3,
        ge=0,
        description="while modalities are sending, forwarding of routine studies waits until "
        "no instance has arrived for this long (0 = forward at once)",
    )
    yield_max_seconds: float = Field(
        default=5.0, ge=0, description="longest such wait of a received instance"
    )
    max_attempts: int = Field(default=12, ge=1, description="failures before dead-letter")
    backoff_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    request_timeout: float = Field(default=120.0, gt=0)
    wire: Literal["auto", "none", "gzip", "lossless"] = Field(
        default="auto",
        description="lossless: JPEG-LS for native images + gzip for the rest; auto: none over "
        "loopback, lossless otherwise",
    )
    commitment_timeout: float = Field(
        default=3600.0, gt=0, description="longest wait before a Storage Commitment reply"
    )
    retention_hours: float = Field(
        default=168.0,
        ge=0,
        description="keep spooled files this long after the study is "
        "complete at the centre (for re-sends and local query/retrieve)",
    )
    local_catalog: bool = Field(
        default=False,
        description="answer C-FIND/C-MOVE/C-GET look-ups from the centre's database on this "
        "machine instead of over QIDO-RS (telerad serve sets it for its own gateway)",
    )
    status_host: str = "127.0.0.1"
    status_port: int = Field(default=8081, ge=0, le=65535, description="0 = no status page")


class AuthSettings(BaseModel):
    """Bearer tokens and passwords."""

    secret_key: SecretStr | None = Field(
        default=None,
        description="HMAC key for access tokens; in development generated once into the data dir",
    )
    token_minutes: int = Field(default=30, ge=1, le=24 * 60)


class ViewerSettings(BaseModel):
    """DICOMweb retrieval and rendering for browsers (issue 4)."""

    cors_origins: list[str] = Field(
        default_factory=list, description="origins allowed by CORS; [] = no CORS headers"
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="proxies whose Forwarded/X-Forwarded-* headers are believed ('*' = any)",
    )


class RenderingSettings(BaseModel):
    """Server-side rendering of frames (rendered/thumbnail)."""

    cache_mb: int = Field(default=256, ge=0, le=65536, description="decoded/rendered cache")
    jpeg_quality: int = Field(default=90, ge=1, le=100, description="JPEG quality without quality=")
    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level of PNG output")
    thumbnail_size: int = Field(default=128, ge=16, le=1024, description="thumbnail box, pixels")
    prefetch_neighbours: int = Field(
        default=2, ge=0, le=16, description="slices each side rendered ahead after a request"
    )
    prefetch_workers: int = Field(default=1, ge=0, le=8, description="prefetch threads")
    max_age: int = Field(default=3600, ge=0, le=31536000, description="Cache-Control max-age, s")


class WorklistSettings(BaseModel):
    """Reading tasks: SLA, leases, escalation (issue 5)."""

    lease_minutes: int = Field(
        default=30, ge=1, le=24 * 60, description="a claim lasts this long unless renewed"
    )
    sla_minutes_stat: int = Field(default=60, ge=1, description="report due after completion")
    sla_minutes_urgent: int = Field(default=4 * 60, ge=1)
    sla_minutes_routine: int = Field(default=24 * 60, ge=1)
    near_due_fraction: float = Field(
        default=0.25, gt=0, lt=1, description="flag near-due when this share of the SLA is left"
    )
    escalation_interval_seconds: float = Field(
        default=30.0, gt=0, description="period of the background loop (intake sweep, leases, SLA)"
    )
    escalation_repeat_minutes: int = Field(
        default=60, ge=0, description="escalate a still-overdue task again after; 0 = once"
    )
    background: bool = Field(default=True, description="run the background loop in the API")
    auto_assign: bool = Field(
        default=True, description="assign new tasks to the least-loaded eligible reader"
    )
    sweep_batch: int = Field(default=200, ge=1, le=10_000, description="rows per loop step")


class ReportSettings(BaseModel):
    """Structured reports and their outputs (issue 5)."""

    institution_name: str = "telerad"


class DeliverySettings(BaseModel):
    """Notifications and share links (issue 5)."""

    share_link_hours: int = Field(default=72, ge=1, le=24 * 90)
    background: bool = Field(default=True, description="run the notification sender in the API")
    sender_interval_seconds: float = Field(default=2.0, gt=0, description="outbox poll period")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    retry_base_seconds: float = Field(default=5.0, gt=0, description="first retry delay")
    retry_max_seconds: float = Field(default=3600.0, gt=0, description="longest retry delay")
    max_attempts: int = Field(default=10, ge=1, description="failed tries before giving up")
    critical_renotify_minutes: float = Field(
        default=15.0, gt=0, description="re-send an unacknowledged critical finding after"
    )
    critical_max_escalations: int = Field(default=48, ge=0)
    share_failures_per_minute: int = Field(
        default=30, ge=1, description="failed share-link lookups per client address and minute"
    )


class Settings(BaseSettings):
    """Everything one telerad process needs, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="TELERAD_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file=None,
    )

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./telerad-data")
    admin_password: SecretStr | None = Field(
        default=None, description="password of the first admin; generated and shown once if unset"
    )
    database: DatabaseSettings = DatabaseSettings()
    objects: ObjectStoreSettings = ObjectStoreSettings()
    http: HttpSettings = HttpSettings()
    dicom: DicomSettings = DicomSettings()
    gateway: GatewaySettings = GatewaySettings()
    auth: AuthSettings = AuthSettings()
    viewer: ViewerSettings = ViewerSettings()
    rendering: RenderingSettings = RenderingSettings()
    worklist: WorklistSettings = WorklistSettings()
    reports: ReportSettings = ReportSettings()
    delivery: DeliverySettings = DeliverySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("TELERAD_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise ValueError(f"TELERAD_CONFIG={config_file} is not a readable file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _production_needs_real_secrets(self) -> Settings:
        if self.environment == "production":
            if self.auth.secret_key is None or len(self.auth.secret_key.get_secret_value()) < 32:
                raise ValueError("production needs TELERAD_AUTH__SECRET_KEY of 32+ characters")
            if self.database.url is None:
                raise ValueError("production needs TELERAD_DATABASE__URL (PostgreSQL)")
        if self.objects.backend == "s3" and not self.objects.s3_access_key.get_secret_value():
            raise ValueError(
                "objects.backend=s3 needs TELERAD_OBJECTS__S3_ACCESS_KEY and _SECRET_KEY"
            )
        return self

    @property
    def database_url(self) -> str:
        """The catalog's SQLAlchemy URL, defaulting to SQLite in the data directory."""
        return self.database.url or f"sqlite:///{self.data_dir / 'telerad.db'}"

    @property
    def objects_path(self) -> Path:
        """Filesystem object store root."""
        return self.objects.path or self.data_dir / "objects"

    @property
    def gateway_path(self) -> Path:
        """The gateway's spool and outbox directory."""
        return self.gateway.spool_path or self.data_dir / "gateway"

    def token_secret(self) -> str:
        """The token signing key; in development created once in the data directory."""
        if self.auth.secret_key is not None:
            return self.auth.secret_key.get_secret_value()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


def load_settings(**overrides: Any) -> Settings:
    """Build and validate the settings at an entry point (raises ``ValidationError``)."""
    return Settings(**overrides)
