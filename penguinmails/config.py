"""Settings: one TOML file, every key overridable from the environment.

`PENGUINMAILS_<SECTION>__<KEY>` overrides `[section] key` (nested tables add more `__`
parts). Validation happens once, at start, so a daemon never runs on a half-understood
configuration; a bad key is reported by its dotted name and the file it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "PENGUINMAILS_"


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key and its source."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_hostport(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _check_optional_hostport(value: str) -> str:
    return _check_hostport(value) if value else value


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class DatabaseSettings(Section):
    url: str = ""
    pool_min: int = Field(default=2, ge=1)
    pool_max: int = Field(default=10, ge=1)
    command_timeout: float = Field(default=60.0, gt=0)  # seconds, for every daemon statement
    # What sits between the roles and Postgres. "transaction": a pooler in transaction mode
    # (PgBouncer's pool_mode = transaction), where a session lasts one transaction: no
    # prepared statement cache, no LISTEN (the roles poll instead), and only
    # transaction-scoped advisory locks. "none": a direct connection or a session pooler.
    pooler: Literal["none", "transaction"] = "none"
    # A streaming replica for the API's read-only searches and analytics (docs/scaling.md
    # lists which); "" : everything on `url`. The queue, leases and outcomes never use it.
    replica_url: str = ""


class PathsSettings(Section):
    data_dir: Path = Path("./var")


class ApiSettings(Section):
    listen: str = "127.0.0.1:8080"
    # /metrics (and /healthz) for Prometheus, apart from the public listener: metrics show
    # traffic and error rates to whoever can read them. Empty: not served.
    metrics_listen: str = "127.0.0.1:9103"

    _listen = field_validator("listen")(_check_hostport)
    _metrics = field_validator("metrics_listen")(_check_optional_hostport)


# A query parameter name that needs no percent-encoding anywhere in a URL.
_PARAMETER_NAME = re.compile(r"^[A-Za-z0-9_.~-]{1,64}$")


def _check_parameter_name(value: str) -> str:
    if value and not _PARAMETER_NAME.match(value):
        raise ValueError("a query parameter name: letters, digits, _ . ~ - (64 at most); or empty")
    return value


class TrackerSettings(Section):
    listen: str = "127.0.0.1:8081"
    base_url: str = "http://127.0.0.1:8081"
    metrics_listen: str = "127.0.0.1:9104"  # as [api] metrics_listen; empty: not served
    # The query parameter a click's redirect adds with its conversion token, for the site it
    # lands on to report a conversion without an API key. Empty: no token is added.
    conversion_param: str = "pm_cv"
    # The port a tracking domain's TLS is checked on (`domains verify`); only a lab setup
    # would change it.
    https_port: int = Field(default=443, ge=1, le=65535)

    _listen = field_validator("listen")(_check_hostport)
    _metrics = field_validator("metrics_listen")(_check_optional_hostport)
    _conversion_param = field_validator("conversion_param")(_check_parameter_name)


class ThrottleRule(Section):
    """Limits toward one destination domain (or the default for all)."""

    max_connections: int = Field(default=10, ge=1)
    messages_per_connection: int = Field(default=100, ge=1)
    rate_per_second: float = Field(default=0.0, ge=0)  # 0 means unlimited
    burst: int = Field(default=50, ge=1)
    # After this many consecutive 4xx replies (or one 421), stop sending to the domain for
    # `backoff_seconds`, so a receiver that asks us to slow down is not hammered.
    backoff_after_4xx: int = Field(default=5, ge=1)
    backoff_seconds: float = Field(default=60.0, ge=0)
    tls_required: bool = False


class SmarthostSettings(Section):
    host: str = ""  # HOST:PORT; empty sends direct to MX
    username: str = ""
    password: str = ""
    starttls: bool = True


class WarmupSettings(Section):
    """A new source's daily volume, per provider (or per site of no provider), rising day
    by day from `start`: `daily[0]` on the first day, `daily[1]` on the second... After the
    last day the source is warm. Past a day's volume, mail spills to the pool's warm sources,
    or waits for the next day when there are none."""

    start: date
    daily: list[int] = Field(min_length=1)

    @field_validator("daily")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 1 for v in value):
            raise ValueError("every day's volume must be at least 1")
        return value


class SourceSettings(Section):
    """An egress source: the local address deliveries leave from, and the name they EHLO
    with (which should be that address's reverse DNS name, checked at start)."""

    address: str = ""  # "" : the system's choice
    ehlo: str = ""  # "" : [mta] hostname
    warmup: WarmupSettings | None = None


class EgressPool(Section):
    sources: dict[str, float] = Field(min_length=1)  # source name -> weight

    @field_validator("sources")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        if any(w <= 0 for w in value.values()):
            raise ValueError("weights must be positive")
        return value


def parse_processes(value: object) -> int | Literal["auto"]:
    """`[mta] processes`: a positive number of worker processes, or "auto" (one per core)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            value = int(text)
    # bool is an int to Python, but `processes = true` is a mistake, not one process.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    raise ValueError(f'expected a positive whole number or "auto", got {value!r}')


def cores() -> int:
    """The cores this process may run on: its CPU affinity (a unit's CPUAffinity=, taskset),
    which can be fewer than the machine has."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


BreakerScope = Literal["identity", "campaign", "domain", "tenant"]
BREAKER_SCOPES: tuple[BreakerScope, ...] = ("identity", "campaign", "domain", "tenant")


class BreakerSettings(Section):
    """The circuit breaker: a sending campaign whose rates over the window pass a limit is
    paused until resumed by hand. Defaults sit under the mailbox providers' published limits
    (Gmail and Yahoo ask for complaints under 0.3%)."""

    enabled: bool = True
    window_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    min_sample: int = Field(default=100, ge=1)  # delivered + bounced before rates count
    # A sending domain or a whole tenant is a bigger hammer: its rates count only over a
    # larger sample, so a few early bounces of one list do not stop everything.
    broad_min_sample: int = Field(default=1000, ge=1)
    max_bounce_rate: float = Field(default=0.05, gt=0, le=1)
    max_complaint_rate: float = Field(default=0.003, gt=0, le=1)
    check_interval: float = Field(default=30.0, gt=0)  # seconds between checks, per worker
    # What is watched: each sending identity, each campaign, each tenant's sending (From)
    # domain, each tenant as a whole; each paused on its own rates.
    scopes: list[BreakerScope] = Field(default_factory=lambda: list(BREAKER_SCOPES))


class MtaSettings(Section):
    hostname: str = "localhost"
    bounce_domain: str = "bounces.localhost"
    routes: dict[str, str] = Field(default_factory=dict)
    smarthost: SmarthostSettings = Field(default_factory=SmarthostSettings)
    sandbox: bool = False  # deliver everything to sandbox_sink, never to real MX hosts
    sandbox_sink: str = "127.0.0.1:2525"
    # Live sends only from domains whose DKIM and DMARC checks pass (`penguinmails domains
    # verify`), refused at the API's door otherwise; test mode is never gated. `up` and lab
    # setups that route to private peers ([mta.routes]) turn it off.
    require_verified_domains: bool = True
    throttle: dict[str, ThrottleRule] = Field(default_factory=dict)
    default_throttle: ThrottleRule = Field(default_factory=ThrottleRule)

    metrics_listen: str = "127.0.0.1:9101"  # /metrics and /healthz; empty: not served
    # Worker processes under one `penguinmails mta` (a supervisor starts them when above 1);
    # "auto": one per core. They share every domain's connection cap through the database.
    processes: int | Literal["auto"] = 1
    batch_size: int = Field(default=200, ge=1)
    # Outcomes are written in batches gathered for this long: fewer commits under load. A
    # crash inside the window resends (at-least-once), never loses.
    outcome_flush_interval: float = Field(default=0.005, ge=0, le=5)
    max_in_flight: int = Field(default=1000, ge=1)
    lease_seconds: float = Field(default=300.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    shutdown_grace: float = Field(default=20.0, ge=0)

    connect_timeout: float = Field(default=30.0, gt=0)
    command_timeout: float = Field(default=60.0, gt=0)
    data_timeout: float = Field(default=120.0, gt=0)
    idle_timeout: float = Field(default=10.0, gt=0)
    opportunistic_tls: bool = True
    dns_servers: list[str] = Field(default_factory=list)  # HOST:PORT; empty uses resolv.conf
    dns_timeout: float = Field(default=10.0, gt=0)
    mx_port: int = Field(default=25, ge=1, le=65535)  # only a lab setup would change this
    # MTA-STS (RFC 8461): honour receivers' published TLS policies (mta/mtasts.py).
    mta_sts: bool = True
    mta_sts_port: int = Field(default=443, ge=1, le=65535)  # only a lab setup would change this
    # Extra CA certificates (PEM) trusted when verifying receivers: MTA-STS policy hosts and
    # MX certificates under an enforced policy. Empty: the system's CAs alone.
    tls_ca_file: str = ""
    # Traffic shaping by site and provider (mta/shaping.py); configs/shaping.toml ships rules
    # for the big providers. "" : per-domain throttles only.
    shaping_file: str = ""
    # Egress sources and their weighted pools (mta/sources.py). No sources: one default
    # source, the system's address and [mta] hostname.
    sources: dict[str, SourceSettings] = Field(default_factory=dict)
    pools: dict[str, EgressPool] = Field(default_factory=dict)
    default_pool: str = ""  # "" : every source, equal weights
    # Which pool each tenant's messages leave from, by tenant name (a campaign's
    # settings.egress_pool comes first); others use default_pool.
    tenant_pools: dict[str, str] = Field(default_factory=dict)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)

    retry_base_seconds: float = Field(default=60.0, gt=0)
    retry_max_seconds: float = Field(default=4 * 3600.0, gt=0)
    max_age_seconds: float = Field(default=5 * 86400.0, gt=0)  # Postfix's maximal_queue_lifetime

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, str]) -> dict[str, str]:
        for hop in value.values():
            _check_hostport(hop)
        return {domain.lower(): hop for domain, hop in value.items()}

    @field_validator("throttle")
    @classmethod
    def _throttle(cls, value: dict[str, ThrottleRule]) -> dict[str, ThrottleRule]:
        return {domain.lower(): rule for domain, rule in value.items()}

    @field_validator("sandbox_sink")
    @classmethod
    def _sink(cls, value: str) -> str:
        return _check_hostport(value)

    _metrics = field_validator("metrics_listen")(_check_optional_hostport)

    @model_validator(mode="after")
    def _egress(self) -> MtaSettings:
        for name, pool in self.pools.items():
            unknown = sorted(set(pool.sources) - set(self.sources))
            if unknown:
                raise ValueError(f"pools.{name} names unknown sources: {unknown}")
        if self.default_pool and self.default_pool not in self.pools:
            raise ValueError(f"default_pool {self.default_pool!r} is not one of [mta.pools]")
        for tenant, pool_name in self.tenant_pools.items():
            if pool_name not in self.pools:
                raise ValueError(f"tenant_pools.{tenant}: {pool_name!r} is not one of [mta.pools]")
        return self

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> int | Literal["auto"]:
        return parse_processes(value)

    def worker_count(self) -> int:
        """How many worker processes `processes` means on this machine."""
        return cores() if self.processes == "auto" else self.processes

    def rule_for(self, domain: str) -> ThrottleRule:
        return self.throttle.get(domain, self.default_throttle)


class InboundSettings(Section):
    listen: str = "127.0.0.1:2526"
    # Domains whose mail is accepted (the return path and List-Unsubscribe mailto: domain);
    # RCPT to anything else is refused as relaying. Empty: [mta] bounce_domain alone.
    bounce_domains: list[str] = Field(default_factory=list)
    max_message_size: int = Field(default=10 * 1024 * 1024, ge=1024)  # 552 above this
    max_sessions: int = Field(default=100, ge=1)  # more connections get 421 at once
    # Per client address (an IPv6 client by its /64), as Postfix's anvil counts them: at most
    # this many sessions at once (smtpd_client_connection_count_limit), so one host's idle
    # sockets cannot hold every session; 0: no per-client cap.
    max_sessions_per_client: int = Field(default=10, ge=0)
    # At most this many connections per client per client_rate_window seconds, refused ones
    # included (smtpd_client_connection_rate_limit, anvil_rate_time_unit); 0: no rate limit.
    client_connection_rate: int = Field(default=120, ge=0)
    client_rate_window: float = Field(default=60.0, gt=0)
    # STARTTLS is offered when both are set (PEM files); never required, since many MTAs
    # that send bounces cannot do TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = Field(default=None, validate_default=True)
    metrics_listen: str = "127.0.0.1:9102"  # /metrics and /healthz; empty: not served

    _listen = field_validator("listen")(_check_hostport)

    @field_validator("bounce_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower().rstrip(".") for d in value if d.strip()]

    @field_validator("metrics_listen")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _check_hostport(value) if value else value

    @field_validator("tls_key")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: Any) -> Path | None:
        if (info.data.get("tls_cert") is None) != (value is None):
            raise ValueError("tls_cert and tls_key are set together or not at all")
        return value


class WebhookSettings(Section):
    allow_private_targets: bool = False


class BillingPlan(Section):
    price: str = Field(min_length=1)  # the Stripe price id (price_...)
    tier: Literal["starter", "professional", "enterprise"]


class BillingSettings(Section):
    """Stripe (api.billing). No secret_key: billing is off, and its routes say so."""

    secret_key: str = ""  # sk_live_... or sk_test_... of the Stripe account
    webhook_secret: str = ""  # whsec_... of the webhook endpoint
    api_base: str = ""  # "" : Stripe's own; tests point it at a local fake
    webhook_tolerance: int = Field(default=300, ge=1, le=3600)  # seconds a signature is good
    # plan id (as sent to checkout and kept in Stripe's metadata) -> price and tier
    plans: dict[str, BillingPlan] = Field(default_factory=dict)
    success_url: str = "https://app.penguinmails.com/dashboard/settings/billing?checkout=success"
    cancel_url: str = "https://app.penguinmails.com/dashboard/settings/billing?checkout=canceled"
    portal_return_url: str = "https://app.penguinmails.com/dashboard/settings/billing"


class SecuritySettings(Section):
    # Keys for HMAC signing (tracking links, VERP addresses) and for encrypting secrets at
    # rest. The first signs; all verify, so a key can be rotated without breaking old links.
    # Empty: the keys come from key_file, else from the systemd credential
    # `penguinmails-secret-key`, else a key is generated once into `<data_dir>/secret.key`
    # (penguinmails.secrets).
    secret_keys: list[str] = Field(default_factory=list)
    # A file of keys (one a line, newest first) kept away from the data dir and its backups,
    # e.g. /etc/penguinmails/secret.key. Only ever read: it must exist, and must not be open
    # to group or others. Empty: not used.
    key_file: Path | None = None

    @field_validator("key_file", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return None if value == "" else value


class AiSettings(Section):
    """Content analysis (api.ai). Everything but rewriting runs locally and is always on."""

    # An OpenAI-compatible endpoint (its base URL, ".../v1") that rewrites a subject when an
    # optimize-content request asks for it (`rewrite: true`). Empty: off; nothing needs it.
    rewrite_url: str = ""
    rewrite_model: str = ""
    rewrite_api_key: str = ""  # sent as a Bearer token when set
    rewrite_timeout: float = Field(default=30.0, gt=0)
    # Score content with the local `spamassassin -L` (Debian's spamassassin package) when it
    # is installed; the answer says when it is not.
    spamassassin: bool = True
    spamassassin_timeout: float = Field(default=30.0, gt=0)
    # Delivered messages of an account before its own history is used to estimate what a
    # change does to opens and clicks (fewer: the documented prior, no change claimed).
    min_history: int = Field(default=200, ge=10)


class LoggingSettings(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


# An unsubscribe link finds its recipient through its message, and must keep working for 30
# days after the send (CAN-SPAM): a message is never dropped sooner.
MIN_MESSAGES_DAYS = 30


class TenantRetention(Section):
    """One tenant's own retention (`[retention.tenants.NAME]`), longer or shorter than the
    defaults; what it leaves unset follows them."""

    messages_days: int | None = Field(default=None, ge=MIN_MESSAGES_DAYS)
    events_days: int | None = Field(default=None, ge=1)


class RetentionSettings(Section):
    """What `penguinmails maintain` keeps (penguinmails/retention.py). Queued and in-flight
    messages, suppressions and the analytics rollups are never dropped."""

    # Days a webhook delivery is kept after the day it was written; a day still holding a
    # pending or in-flight delivery is kept until it has none.
    webhook_deliveries_days: int = Field(default=30, ge=1)
    # Days a finished message (and its per-message tracking rows) is kept after the week it
    # was archived in, and an event after the week it was written.
    messages_days: int = Field(default=90, ge=MIN_MESSAGES_DAYS)
    events_days: int = Field(default=90, ge=1)
    ahead_days: int = Field(default=14, ge=1)  # days of partitions created in advance
    # batch of messages archived per transaction
    archive_batch: int = Field(default=5000, ge=1)
    tenants: dict[str, TenantRetention] = Field(default_factory=dict)  # by tenant name

    @model_validator(mode="after")
    def _events_outlive_deliveries(self) -> RetentionSettings:
        # A webhook delivery is sent from its event: an event dropped first would leave the
        # delivery with nothing to send.
        for name, days in [("", self.events_days)] + [
            (f"tenants.{t}.", r.events_days) for t, r in self.tenants.items()
        ]:
            if days is not None and days < self.webhook_deliveries_days:
                raise ValueError(
                    f"retention.{name}events_days ({days}) must be at least "
                    f"webhook_deliveries_days ({self.webhook_deliveries_days})"
                )
        return self

    def days(self, kind: str, tenant: str | None = None) -> int:
        """Days `kind` ("messages" or "events") is kept for `tenant` (its name)."""
        own = self.tenants.get(tenant) if tenant is not None else None
        value = getattr(own, f"{kind}_days") if own is not None else None
        return int(value if value is not None else getattr(self, f"{kind}_days"))


class Settings(Section):
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    paths: PathsSettings = Field(default_factory=PathsSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    mta: MtaSettings = Field(default_factory=MtaSettings)
    inbound: InboundSettings = Field(default_factory=InboundSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    billing: BillingSettings = Field(default_factory=BillingSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    ai: AiSettings = Field(default_factory=AiSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    def inbound_domains(self) -> list[str]:
        """The domains `penguinmails inbound` accepts mail for, first the one addresses are
        made on: [inbound] bounce_domains, else [mta] bounce_domain."""
        return self.inbound.bounce_domains or [self.mta.bounce_domain]


def _env_value(raw: str) -> Any:
    """Environment values are strings; JSON gives tables, numbers and booleans a way in."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{name}: {'.'.join(parts)} overrides a value that is not a table"
                )
            node = child
        node[parts[-1]] = _env_value(raw)
    return data


def _describe(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {key}: {message}")
    return "invalid configuration\n" + "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"{source}: no such config file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    data = _apply_env(data, environ)
    if any(k.startswith(ENV_PREFIX) for k in environ):
        source += " (with PENGUINMAILS_* environment overrides)"
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None
    shaping = settings.mta.shaping_file
    if path is not None and shaping and not Path(shaping).is_absolute():
        # Beside the configuration that names it, wherever the process runs from.
        beside = str(Path(path).resolve().parent / shaping)
        settings = settings.model_copy(
            update={"mta": settings.mta.model_copy(update={"shaping_file": beside})}
        )
    # Here, not on first use: an unusable key source must stop every command at start, not
    # fail a request later or quietly fall back to a generated key.
    from penguinmails.secrets import KeySourceError, check_key_sources

    try:
        check_key_sources(settings, environ)
    except KeySourceError as exc:
        where = f"{source}: " if exc.setting else ""
        raise ConfigError(f"invalid configuration\n{where}{exc}") from None
    return settings
