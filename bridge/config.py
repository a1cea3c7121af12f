"""Configuration: one YAML file, overridden by ``BRIDGE_*`` environment variables, validated once.

Why not pydantic-settings: its environment source silently ignores variables it does not know,
so a typo such as ``BRIDGE_SEGMENT__WRTIE_KEY`` would leave the bridge in dry-run without a word.
Here every ``BRIDGE_`` variable (except ``BRIDGE_CONFIG``, the file's path) is folded into the
same nested dict as the file and validated by the same models with ``extra="forbid"``, so an
unknown key from either place is an error that names it (an error caused by a variable names the
variable). A variable for a string setting (a secret, a path, a name) is taken verbatim:
``BRIDGE_AUTH__PASSWORD='abc #def'`` is ``abc #def``, ``yes`` and ``123456`` are strings. Only a
variable for a non-string setting is read as a YAML scalar (``8080`` a number, ``true`` a
boolean, ``[a, b]`` a list). An empty password or write key is an error: leave it unset instead.
A YAML syntax error names the file, line and column, never the line's content (it may hold a
secret).

Loading never exits: it raises :class:`bridge.errors.ConfigError`, and the CLI turns that into
exit status 78 (``EX_CONFIG``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import secretfiles
from bridge.errors import ConfigError
from bridge.messages import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES
from bridge.synap import codes as synap_codes

ENV_PREFIX = "BRIDGE_"
ENV_CONFIG_PATH = "BRIDGE_CONFIG"
DEFAULT_CONFIG_PATH = Path("config.yaml")
DEFAULT_DESTINATION = "default"
SEGMENT_US = "https://api.segment.io"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _not_empty(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not value.get_secret_value():
        raise ValueError("must not be empty (to set none, leave it unset)")
    return value


#: A password or write key: unset (None) is a meaning ("no authentication", "dry-run"), an empty
#: string is a mistake (an empty variable, ``password: ""``) and never silently means unset.
Secret = Annotated[SecretStr | None, AfterValidator(_not_empty)]


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    #: From connection open (or the end of the previous answer) to a complete request head.
    header_timeout_secs: float = Field(10.0, gt=0)
    #: For reading a whole body once the head is in (408 after it).
    body_timeout_secs: float = Field(30.0, gt=0)
    #: Open connections at most (more are closed at once); kept under the descriptor limit.
    max_connections: int = Field(2000, ge=1)
    #: Open connections at most from one client address (unset: a tenth of max_connections),
    #: so one client cannot hold every slot; addresses in trusted_proxies are not limited.
    max_connections_per_client: int | None = Field(None, ge=1)
    #: A kept-alive connection is closed after its answer once it is this old, however often
    #: it asks: requests do not keep a connection (and its slot) forever.
    connection_max_age_secs: float = Field(300.0, gt=0)
    #: Proxies whose X-Forwarded-For is believed for the client address in log lines.
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()

    def per_client_connections(self) -> int:
        """``max_connections_per_client``, or its default: a tenth of ``max_connections``."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return max(1, self.max_connections // 10)


class AuthConfig(_Section):
    username: str = "synap"
    password: Secret = None
    #: Also accepted while the password is rotated (``synap sync --rotate-password``): Synap's
    #: subscriptions move to it while the bridge still accepts the current one, so no webhook
    #: is refused in between (docs/operations.md).
    next_password: Secret = None

    @model_validator(mode="after")
    def _next_needs_current(self) -> AuthConfig:
        if self.next_password is not None and self.password is None:
            raise ValueError("next_password is set but password is not")
        return self


class SegmentConfig(_Section):
    write_key: Secret = None
    endpoint: str = SEGMENT_US
    timeout_secs: float = Field(15.0, gt=0)
    #: The whole upload (connect, send, the full answer) ends by then: ``timeout_secs`` bounds
    #: each socket operation only, so an answer trickling a byte at a time would hold a batch
    #: (and an upload slot) forever.
    total_timeout_secs: float = Field(30.0, gt=0)
    gzip: bool = True

    @field_validator("total_timeout_secs")
    @classmethod
    def _total_covers_one_read(cls, value: float, info: ValidationInfo) -> float:
        per_read = info.data.get("timeout_secs")
        if per_read is not None and value <= per_read:
            raise ValueError(f"must be greater than timeout_secs ({per_read})")
        return value

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_endpoint(value)


class StorageConfig(_Section):
    path: Path = Path("data/bridge.db")
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"
    busy_timeout_secs: float = Field(5.0, gt=0)
    max_pending: int = Field(1_000_000, ge=1)
    min_free_bytes: int = Field(100 * 1024 * 1024, ge=0)
    delivered_retention_secs: float = Field(7 * 24 * 3600, ge=0)
    #: ``postgresql://user:password@host/db``: the queue lives in PostgreSQL, shared by every
    #: replica (bridge.store.postgres); unset keeps SQLite at ``path``. A secret (the password).
    url: SecretStr | None = None
    pool_size: int = Field(10, ge=2, le=200)
    #: asyncpg's prepared-statement cache; 0 behind PgBouncer in transaction mode.
    statement_cache_size: int = Field(100, ge=0)
    connect_timeout_secs: float = Field(5.0, gt=0)
    command_timeout_secs: float = Field(10.0, gt=0)
    #: How long a claimed message stays leased to the process that claimed it; after that any
    #: replica may claim it again. None: max(60, 2 x delivery.batch.timeout_secs + 60).
    lease_secs: float | None = Field(None, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(POSTGRES_SCHEMES):
            raise ValueError(
                f"must start with postgresql:// (got {masked_url(value.get_secret_value())!r})"
            )
        return value

    @property
    def postgres(self) -> bool:
        """True when the queue lives in PostgreSQL (``url`` set), False for SQLite."""
        return self.url is not None


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def masked_url(url: str) -> str:
    """``postgresql://bridge:s3cret@db/bridge`` -> ``postgresql://bridge:***@db/bridge``.

    Also masks every query parameter named like a password (``password=``, ``sslpassword=``).
    Used wherever a storage URL is shown (check-config, logs, errors): the password never
    leaves the process. The user info ends at the *last* ``@`` of the URL, so an unencoded
    password holding ``@``, ``/`` or ``?`` is masked whole; an ``@`` inside the query makes
    more than the password masked, never less.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***"
    userinfo, at, after = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        user = user.partition("?")[0].partition("/")[0]
        rest = f"{user}{':***' if colon else ''}@{after}"
    head, question, query = rest.partition("?")
    if question:
        query = "&".join(
            f"{part.partition('=')[0]}=***" if _secret_parameter(part) else part
            for part in query.split("&")
        )
    return f"{scheme}://{head}{question}{query}"


def _secret_parameter(part: str) -> bool:
    return part.partition("=")[0].strip().lower().endswith("password")


class BatchConfig(_Section):
    max_events: int = Field(500, ge=1, le=MAX_BATCH_MESSAGES)
    max_bytes: int = Field(475_000, ge=40_000, le=MAX_BATCH_BYTES)
    timeout_secs: float = Field(1.0, gt=0)


class RetryConfig(_Section):
    initial_backoff_secs: float = Field(1.0, gt=0)
    max_backoff_secs: float = Field(300.0, gt=0)
    max_age_secs: float = Field(7 * 24 * 3600, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_backoff_secs < self.initial_backoff_secs:
            raise ValueError("max_backoff_secs must be at least initial_backoff_secs")
        return self


class DeliveryConfig(_Section):
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    concurrency: int = Field(2, ge=1, le=32)


class MapperConfig(_Section):
    """The mapping stage (keep first, judge after). docs/operations.md, "Processes"."""

    #: Map in a process of its own under ``serve`` (a second core); False: inside serve's own
    #: process (one core, as small hosts and the in-process tests run it).
    process: bool = True
    #: Webhooks per take (recorded in transactions of the store's size: 32 on SQLite).
    batch: int = Field(128, ge=1, le=1000)
    #: Tries before a webhook whose mapping keeps failing becomes a ``mapping_failed`` dead letter.
    max_tries: int = Field(3, ge=1, le=20)
    #: How much lower than intake the mapping process runs when they compete for the CPU (Unix
    #: niceness added to serve's): a burst is answered at the pace of a durable write and mapped
    #: as the CPU allows (the mapping lag shows it); 0: equal shares.
    nice: int = Field(5, ge=0, le=19)
    #: Once the mapping lag passes this, the stage catches up: takes of 1,024 recorded 512 per
    #: transaction, the next part mapped while the last is recorded (faster mapping, longer
    #: waits for intake's commits on SQLite) until it has caught up and the load has passed (a
    #: take not full, the lag under half of this, intake not busy). 0: always.
    catch_up_after_secs: float = Field(10.0, ge=0)
    #: While the mapper catches up, intake reads a webhook only when the mapping has mapped one
    #: (each waits 1 s at most, then is kept anyway): the lag stops growing and intake's CPU
    #: goes to the mapping. False: intake as fast as it can commit, the lag grows.
    pace_intake: bool = True
    #: During a burst (intake busy, a full take waiting), the mapper pauses after each round as
    #: long as its records took (eight times as long on PostgreSQL, whose server runs its
    #: statements at full priority), so that SQLite's write lock and PostgreSQL's server go to
    #: intake too, not only the CPU (``nice``); it stops once it catches up. False: the mapper
    #: takes all it is given, intake gets the rest.
    yield_to_intake: bool = True


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console", "auto"] = "auto"
    #: Dry-run lines show messages with emails and names masked unless this is true.
    dry_run_full: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class ShutdownConfig(_Section):
    grace_secs: float = Field(20.0, gt=0)


class MetricsConfig(_Section):
    enabled: bool = True
    port: int | None = Field(None, ge=0, le=65535, description="separate port; None = main port")
    username: str | None = None
    password: Secret = None


class ConsoleConfig(_Section):
    """The operator's console (bridge.console): its own listener and its own credentials.

    Off until both ``username`` and ``password`` are set: a page that shows personal data must
    never be open by default, and a password-less "read-only" mode would be that. It never
    shares the webhook listener or the webhook password (a Synap subscription's password would
    otherwise open the dead-letter replay to whoever can read Synap's settings).
    """

    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    username: str | None = Field(None, min_length=1, max_length=200)
    password: Secret = None
    #: Mark the session cookie ``Secure`` (browsers then send it over HTTPS only): set it when a
    #: TLS proxy stands in front (docs/operations.md).
    secure_cookie: bool = False
    #: A signed-in session ends after this long, active or not.
    session_secs: float = Field(8 * 3600, gt=0)
    #: Failed sign-ins allowed per client address within ``login_window_secs`` (then 429).
    login_attempts: int = Field(5, ge=1)
    login_window_secs: float = Field(300.0, gt=0)

    @property
    def enabled(self) -> bool:
        return self.username is not None and self.password is not None


class CodeMapping(_Section):
    """Per Synap event code: switch it off, rename its track event, switch off single calls."""

    enabled: bool = True
    event: str | None = Field(None, min_length=1, max_length=200)
    identify: bool = True
    track: bool = True
    group: bool = True
    drop_properties: tuple[str, ...] = ()
    add_properties: dict[str, Any] = {}


class MappingConfig(_Section):
    trait_prefix: str = "EI-"
    drop_properties: tuple[str, ...] = ()
    drop_traits: tuple[str, ...] = ()
    add_properties: dict[str, Any] = {}
    include_question_data: bool = False
    exam_results_released_code: str = synap_codes.DEFAULT_EXAM_RESULTS_RELEASED
    #: "any": an exam attempt's event comes from whichever of attempt.* / exam.* is stored first
    #: (same messageId). "exam_codes": attempt.* webhooks of exam attempts map to nothing, so the
    #: exam.* webhook (with exam name and user group) always makes the event. docs/mapping.md.
    exam_attempts_from: Literal["any", "exam_codes"] = "any"
    #: How long an exam attempt's attempt.* message waits in the store for the exam.* webhook
    #: of the same attempt and stage, which replaces it with the exam details. docs/mapping.md.
    exam_hold_secs: float = Field(default=10.0, ge=0, le=600)
    #: Send the acting user's traits (name, email, EI-* attributes) as context.traits on tracks.
    context_traits: bool = True
    #: Also send an identify built from the user in every event body (not only user.* codes).
    identify_from_events: bool = False
    default_portal_id: str | None = None
    codes: dict[str, CodeMapping] = {}

    @field_validator("exam_results_released_code")
    @classmethod
    def _released_code(cls, value: str) -> str:
        if not synap_codes.CODE_RE.fullmatch(value):
            raise ValueError("must be a Synap event code such as 'exam.resultsReleased'")
        if value in synap_codes.STATIC_CODES:
            raise ValueError(f"{value!r} is already the code of another Synap event")
        return value

    @field_validator("codes")
    @classmethod
    def _known_codes(cls, value: dict[str, CodeMapping], info: ValidationInfo) -> Any:
        default = synap_codes.DEFAULT_EXAM_RESULTS_RELEASED
        released = info.data.get("exam_results_released_code", default)
        known = synap_codes.all_codes(released)
        unknown = [key for key in value if key not in known]
        if unknown:
            raise ValueError(f"unknown Synap event code(s) {unknown} (known: {', '.join(known)})")
        return value


class Destination(_Section):
    write_key: Secret = None
    endpoint: str = SEGMENT_US
    portal_ids: tuple[str, ...] = ()
    sub_portal_ids: tuple[str, ...] = ()

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return SegmentConfig._http_url(value)


class RoutingConfig(_Section):
    """Extra Segment destinations chosen by portal / sub-portal id.

    ``default_destination`` names where unmatched webhooks go: ``default`` (the ``segment``
    section) unless set to null, in which case an unmatched webhook is a dead letter.
    """

    destinations: dict[str, Destination] = {}
    default_destination: str | None = DEFAULT_DESTINATION

    @model_validator(mode="after")
    def _known_default(self) -> RoutingConfig:
        if DEFAULT_DESTINATION in self.destinations:
            raise ValueError(f"'{DEFAULT_DESTINATION}' is reserved for the segment section")
        known = {DEFAULT_DESTINATION, *self.destinations}
        if self.default_destination is not None and self.default_destination not in known:
            raise ValueError(f"default_destination {self.default_destination!r} is not defined")
        for field in ("portal_ids", "sub_portal_ids"):
            owner: dict[str, str] = {}
            for name, destination in self.destinations.items():
                for ident in getattr(destination, field):
                    if ident in owner:
                        what = field.removesuffix("s")
                        raise ValueError(
                            f"{what} {ident!r} is claimed by both {owner[ident]!r} and {name!r}"
                        )
                    owner[ident] = name
        return self


SYNAP_API = "https://api.synap.ac/v3"


def _https_or_loopback(value: str) -> str:
    """HTTPS, or plain HTTP to this host only (a local test server): a token or a password must
    never cross a network in clear."""
    parts = urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value.rstrip("/")
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return value.rstrip("/")
    raise ValueError("must be an https:// URL (http:// only to 127.0.0.1, ::1 or localhost)")


class SynapConfig(_Section):
    """Synap's API, for ``synap-bridge synap sync`` (the webhook subscriptions)."""

    api_url: str = SYNAP_API
    #: A Personal Access Token (portal Settings -> Automations -> API). Environment only:
    #: BRIDGE_SYNAP__TOKEN (or SYNAP_API_TOKEN).
    token: Secret = None
    #: The bridge's address as Synap reaches it; subscriptions point at
    #: ``{public_url}/webhooks/synap/{code}``.
    public_url: str | None = None
    #: Total deadline of one API call (connect, send, answer).
    timeout_secs: float = Field(30.0, gt=0, le=600)
    #: The codes to subscribe; null: every code the bridge maps and has not switched off.
    codes: tuple[str, ...] | None = None

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _https_or_loopback(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else _https_or_loopback(value)


class Config(_Section):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    segment: SegmentConfig = SegmentConfig()
    storage: StorageConfig = StorageConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    mapper: MapperConfig = MapperConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    metrics: MetricsConfig = MetricsConfig()
    mapping: MappingConfig = MappingConfig()
    routing: RoutingConfig = RoutingConfig()
    synap: SynapConfig = SynapConfig()
    console: ConsoleConfig = ConsoleConfig()

    @model_validator(mode="after")
    def _console_has_its_own_password(self) -> Config:
        password = self.console.password
        if password is None:
            return self
        if self.console.enabled and self.console.port and self.console.port == self.server.port:
            raise ValueError("console.port must differ from server.port: it is its own listener")
        others = (self.auth.password, self.auth.next_password, self.metrics.password)
        secret = password.get_secret_value()
        if any(other is not None and other.get_secret_value() == secret for other in others):
            raise ValueError(
                "console.password must differ from the webhook and metrics passwords (auth, "
                "metrics): whoever reads Synap's webhook settings must not be able to sign in"
            )
        return self

    @property
    def mapping_tag(self) -> str:
        """A digest of what decides how a webhook maps (``mapping`` and ``routing``, secrets
        masked as pydantic prints them): replicas sharing a PostgreSQL queue map what a replica
        of the same configuration kept, so a rolling deploy never maps with routes a replica
        does not know (bridge.store.MappingStore.take)."""
        data = self.model_dump(mode="json", include={"mapping", "routing"})
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def dry_run(self) -> bool:
        """True when the default destination has no write key: its messages are logged and
        kept queued, not sent (an empty key is a configuration error, see ``Secret``)."""
        return self.segment.write_key is None

    @property
    def dry_run_destinations(self) -> list[str]:
        """Destinations without a write key (dry-run): their messages wait, kept."""
        keys = {DEFAULT_DESTINATION: self.segment.write_key}
        keys.update({name: d.write_key for name, d in self.routing.destinations.items()})
        return [name for name, key in keys.items() if key is None]

    def listen_problem(self) -> str | None:
        """Why this configuration must not serve, or None. Secure by default (DESIGN.md)."""
        if self.auth.password is None and not is_loopback(self.server.host):
            return (
                f"server.host is {self.server.host!r} but auth.password is not set: without "
                "credentials the bridge listens on loopback only (set BRIDGE_AUTH__PASSWORD)"
            )
        return None


#: The templates' placeholders (systemd/synap-bridge.env.example): never a real secret.
PLACEHOLDERS = frozenset({"change-me", "changeme", "change_me", "secret", "password"})
#: A webhook password shorter than this is refused by check-config (it guards every webhook).
MIN_PASSWORD_CHARS = 16


def placeholder_secrets(config: Config) -> list[str]:
    """Secret settings still holding a template placeholder (serve and check-config refuse)."""
    return [
        f"{name}: still the template's placeholder; set the real secret"
        for name, value in _secrets(config.model_dump(mode="python"), "")
        if value.get_secret_value().strip().lower() in PLACEHOLDERS
    ]


def weak_secrets(config: Config) -> list[str]:
    """What check-config refuses beyond a valid model: placeholders and short passwords."""
    problems = placeholder_secrets(config)
    for name in ("password", "next_password"):
        value = getattr(config.auth, name)
        if value is not None and len(value.get_secret_value()) < MIN_PASSWORD_CHARS:
            problems.append(
                f"auth.{name}: shorter than {MIN_PASSWORD_CHARS} characters (it guards every "
                "webhook; use a long random one, such as `openssl rand -base64 24`)"
            )
    return problems


def _secrets(value: Any, name: str) -> list[tuple[str, SecretStr]]:
    if isinstance(value, SecretStr):
        return [(name, value)]
    if isinstance(value, dict):
        return [
            found
            for key, item in value.items()
            for found in _secrets(item, f"{name}.{key}" if name else str(key))
        ]
    return []


def check_endpoint(value: str) -> str:
    """A Segment endpoint is a base URL: ``/v1/batch`` is appended to it, so a path such as
    ``/v1`` or ``/v1/batch`` would answer 404 to every request (and pause delivery forever).
    Plain http would send the write key in clear: only to a loopback host (tests, a local
    proxy). A path prefix without ``v1`` stays allowed, for proxies that mount Segment there."""
    parsed = urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parsed.scheme == "http" and not is_loopback(parsed.hostname):
        raise ValueError("must use https:// (http:// only to a loopback host)")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ValueError("must be a base URL without query, fragment or credentials")
    if "v1" in parsed.path.lower().split("/"):
        raise ValueError(
            "must be the base URL only, such as https://api.segment.io: the bridge appends "
            "/v1/batch itself"
        )
    return value.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """``--config`` wins, then ``$BRIDGE_CONFIG``, then ``./config.yaml``."""
    if explicit:
        return Path(explicit)
    if environ.get(ENV_CONFIG_PATH):
        return Path(environ[ENV_CONFIG_PATH])
    return DEFAULT_CONFIG_PATH


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """``BRIDGE_SEGMENT__WRITE_KEY=x`` -> ``{"segment": {"write_key": "x"}}``."""
    tree: dict[str, Any] = {}
    for name, path in env_paths(environ).items():
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([f"{name}: conflicts with another BRIDGE_ variable"])
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError([f"{name}: conflicts with another BRIDGE_ variable"])
        raw = environ[name]
        node[path[-1]] = raw if _is_text(_annotation(path)) else _scalar(raw)
    return tree


def env_paths(environ: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each ``BRIDGE_`` variable and the configuration key it sets, as a path."""
    return {
        name: tuple(name[len(ENV_PREFIX) :].lower().split("__"))
        for name in environ
        if name.startswith(ENV_PREFIX) and name != ENV_CONFIG_PATH
    }


def _annotation(path: tuple[str, ...]) -> Any:
    """The type the models give the key at ``path``, or None when no model has that key."""
    model: Any = Config
    annotation: Any = None
    expect_key = False
    for part in path:
        if expect_key:  # a free-form name (routing.destinations.<name>, mapping.codes.<code>)
            expect_key, annotation = False, model
        else:
            fields = getattr(model, "model_fields", None)
            if not isinstance(fields, dict) or part not in fields:
                return None
            annotation = fields[part].annotation
        if typing.get_origin(annotation) is dict:
            model, expect_key = typing.get_args(annotation)[1], True
        else:
            model = annotation
    return None if expect_key else annotation


def _is_text(annotation: Any) -> bool:
    """True for a string setting (str, secret, path, a choice of words), maybe optional."""
    if annotation in (str, SecretStr, Path):
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    if origin is Annotated:
        return _is_text(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return bool(options) and all(_is_text(arg) for arg in options)
    return False


def _scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, str | int | float | bool | list) or value is None else raw


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; ``override`` wins, nested dicts are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: configuration file not found"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Never ``str(exc)``: PyYAML quotes the offending line, which may hold a password.
        raise ConfigError([f"{path}: not valid YAML{_where(exc)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return data


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1} (content not shown)"


def parse(data: Mapping[str, Any], env: Mapping[str, tuple[str, ...]] | None = None) -> Config:
    """Validate; ``env`` (variable -> key path) makes an error a variable caused name it."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, env or {})) from None


def load(
    explicit_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """The effective configuration: file (if present or named) + environment, validated."""
    environ = os.environ if environ is None else environ
    path = config_path(explicit_path, environ)
    named = bool(explicit_path or environ.get(ENV_CONFIG_PATH))
    data = read_yaml(path) if (named or path.exists()) else {}
    # Secret files (BRIDGE_*_FILE, systemd credentials) become variables; errors name the file's.
    resolved, sources = secretfiles.resolve(environ, is_secret_key)
    paths = {sources.get(name, name): key for name, key in env_paths(resolved).items()}
    return parse(merge(data, env_overrides(resolved)), paths)


def is_secret_key(path: tuple[str, ...]) -> bool:
    """True when the key at ``path`` is a secret (a password, write key, token, storage URL)."""
    return _is_secret(_annotation(path))


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _is_secret(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_secret(arg) for arg in typing.get_args(annotation))
    return False


def _describe(exc: ValidationError, env: Mapping[str, tuple[str, ...]]) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        variable = next((name for name, path in env.items() if loc[: len(path)] == path), None)
        where = f"{variable} ({key})" if variable else key
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        else:  # pydantic prefixes our own validators' messages: the operator needs only ours
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return lines


def masked(config: Config) -> dict[str, Any]:
    """The configuration as plain data with every secret shown as ``***`` (or null if unset)."""
    shown: dict[str, Any] = _mask(config.model_dump(mode="python"))
    return shown


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return masked_url(secret) if secret.startswith(POSTGRES_SCHEMES) else "***"
    if isinstance(value, dict):
        return {key: _mask(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(item) for item in value]
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value
