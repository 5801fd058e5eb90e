"""senders.yaml: discovery, parsing and validation into frozen models.

Every error is one line ``FILE: KEY.PATH: problem; fix``. Unknown keys are
errors (a typo such as ``daly_limit`` must never pass silently), duplicate
keys are errors, and a ``password`` key is refused with the command that puts
the password in the keyring instead.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .envnames import password_env_var
from .errors import ConfigError
from .headers import HeaderSpec, Unsubscribe, mapping_specs, unsubscribe_from
from .limits import MAX_DEPTH, nested_deeper_than
from .paths import config_candidates, user_data_dir

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

    from .oauth import OAuth2Settings

Security = Literal["starttls", "ssl", "none"]
LimitUnit = Literal["messages", "recipients"]
#: The largest max_message_size: 2 GB, beyond what any SMTP server accepts.
MAX_MESSAGE_SIZE = 2_000_000_000
Strategy = Literal["failover", "round-robin", "random", "least-used"]

DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
TOP_LEVEL_KEYS = (
    "timezone",
    "database",
    "templates",
    "defaults",
    "senders",
    "routes",
    "groups",
    "delivery",
    "sendmail",
    "retention",
)
SENDER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: The shortest claim lease. A delivering process renews its claims every third of the lease while they
#: are in flight, so another run can take one over only if that process stalls for two thirds of the lease
#: (swapping, a suspended VM, a long database wait); below this a routine stall would send a message twice.
MIN_LEASE = 30.0
#: The longest retry_initial, retry_max and give_up_after: beyond it a message would wait for ever.
MAX_RETRY_DURATION = 30 * 86400.0
#: The longest claim lease: the claims of a process that died wait this long before another run sends them.
MAX_LEASE = 86400.0
#: How long the body of a sent or failed message is kept (``retention:``), and the range allowed.
DEFAULT_RETENTION = 30 * 86400.0
MIN_RETENTION = 86400.0
MAX_RETENTION = 3650 * 86400.0


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``90``, ``5m``, ``1h``, ``2d``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30, 5m, 1h or 2d")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"must be a duration such as 30, 5m, 1h or 2d (got {value!r})")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"must not be negative (got {value!r})")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it: 30s, 5m, 1h, 2d (or 0.5s)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _Strict(BaseModel):
    # built by _build_models() below, once every model is declared
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class SenderFields(_Strict):
    """Every key a sender (or ``defaults``) may hold; all optional here, required ones checked later."""

    email: str | None = None
    name: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Security | None = None
    username: str | None = None
    auth: bool | None = None
    allow_plaintext_auth: bool | None = None
    reply_to: str | None = None
    daily_limit: int | None = Field(default=None, ge=1, le=10_000_000)
    monthly_limit: int | None = Field(default=None, ge=1, le=300_000_000)
    per_minute: int | None = Field(default=None, ge=1, le=100_000)
    min_interval: float | None = Field(default=None, ge=0, le=86_400, allow_inf_nan=False)
    priority: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)
    active: bool | None = None
    timeout: float | None = Field(default=None, gt=0, le=600, allow_inf_nan=False)
    ca_file: str | None = None
    tls_verify: bool | None = None
    password_command: str | None = None
    connections: int | None = Field(default=None, ge=1, le=16)
    max_per_connection: int | None = Field(default=None, ge=1, le=100_000)
    provider: str | None = None
    region: str | None = None
    limit_unit: LimitUnit | None = None
    max_message_size: int | None = Field(default=None, ge=1, le=MAX_MESSAGE_SIZE)
    oauth2: Any = None  # checked by oauth.parse_oauth2, which names the file and key

    @field_validator(
        "port",
        "daily_limit",
        "monthly_limit",
        "per_minute",
        "min_interval",
        "priority",
        "timeout",
        "connections",
        "max_per_connection",
        "max_message_size",
        mode="before",
    )
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        # pydantic's lax mode reads true/yes/on as 1; in YAML that is always a typo
        if isinstance(value, bool):
            raise ValueError(f"must be a number (got {str(value).lower()})")
        return value


@dataclass(frozen=True)
class Sender:
    """One sending mailbox, fully resolved (defaults applied, paths absolute)."""

    key: str  # the name under ``senders:``; used on the command line and in the keyring
    email: str
    host: str
    port: int
    security: str
    username: str
    display_name: str | None = None
    auth: bool = True
    allow_plaintext_auth: bool = False
    reply_to: str | None = None
    daily_limit: int | None = None
    monthly_limit: int | None = None
    per_minute: int | None = None
    min_interval: float = 0.0
    priority: int = 100
    active: bool = True
    timeout: float = 30.0
    ca_file: Path | None = None
    tls_verify: bool = True
    password_command: str | None = None
    connections: int = 1
    max_per_connection: int = 100
    provider: str | None = None  # the preset that filled unset keys (providers.PROVIDERS)
    limit_unit: str = "messages"  # what daily_limit and monthly_limit count: messages or recipients
    max_message_size: int | None = None  # bytes of the whole message as sent; larger is an input error
    #: (key, where its value came from): "explicit", "defaults", "provider NAME" or "built-in default"
    sources: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    oauth2: OAuth2Settings | None = None  # log in with SASL XOAUTH2 instead of a password

    @property
    def domain(self) -> str:
        """Domain of the sender's address, used for Message-IDs."""
        return self.email.rpartition("@")[2]

    @property
    def from_header(self) -> str:
        """The From header value: display name and address."""
        from email.headerregistry import Address

        return str(Address(display_name=self.display_name or "", addr_spec=self.email))


@dataclass(frozen=True)
class Route:
    """A purpose (``renewal``, ``default``) mapped to candidate senders and how to pick among them."""

    name: str
    senders: tuple[str, ...]
    strategy: str = "failover"
    headers: tuple[HeaderSpec, ...] = ()  # added to every message of the route (values are Jinja)
    unsubscribe: Unsubscribe | None = None  # List-Unsubscribe (and -Post for an https URL)
    auto_submitted: bool = False  # Auto-Submitted: auto-generated (RFC 3834)


@dataclass(frozen=True)
class SendmailRoutes:
    """The ``sendmail:`` key: which route ``mailops sendmail`` uses for a message.

    ``by_address`` maps an envelope sender (``-f``) or From address, lowercased,
    or a whole domain written ``@example.com``, to a route; ``default`` is the
    route for everything else (None: the config's ``default`` route).
    """

    default: str | None = None
    by_address: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry schedule for temporary failures and the claim lease (the ``delivery:`` key)."""

    retry_initial: float = 300.0  # first retry after 5 minutes, as Postfix does
    retry_max: float = 3600.0  # backoff grows up to an hour
    give_up_after: float = 2 * 86400.0  # then the message is failed
    lease: float = 300.0  # a claimed message returns to the queue if its process dies


class _DeliveryModel(_Strict):
    retry_initial: float | None = None
    retry_max: float | None = None
    give_up_after: float | None = None
    lease: float | None = None

    @field_validator("retry_initial", "retry_max", "give_up_after", "lease", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return None if value is None else parse_duration(value)


def _build_models(*models: type[BaseModel]) -> None:
    """Build the validators of ``models`` without pydantic's plugin lookup.

    The lookup reads the metadata of every installed package, a cost in the
    start of every command; these models use no plugin. (Typer's parameter
    validators, built as a command's options are parsed, still do the lookup
    once, about 20 ms.)
    """
    previous = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    try:
        for model in models:
            model.model_rebuild(force=True)
    finally:
        if previous is None:
            del os.environ["PYDANTIC_DISABLE_PLUGINS"]
        else:
            os.environ["PYDANTIC_DISABLE_PLUGINS"] = previous


_build_models(SenderFields, _DeliveryModel)


@dataclass(frozen=True)
class Config:
    """A validated senders.yaml."""

    path: Path
    timezone_name: str
    database_url: str
    templates_dir: Path
    senders: dict[str, Sender]
    routes: dict[str, Route]
    groups: dict[str, tuple[str, ...]]
    delivery: DeliveryPolicy = field(default_factory=DeliveryPolicy)
    sendmail: SendmailRoutes = field(default_factory=SendmailRoutes)
    retention: float = DEFAULT_RETENTION  # seconds the body of a sent or failed message is kept

    @property
    def timezone(self) -> ZoneInfo:
        """The zone in which daily and monthly quotas roll over."""
        return ZoneInfo(self.timezone_name)

    def sender(self, key: str) -> Sender:
        """The sender named ``key``, or a ConfigError listing the known ones."""
        try:
            return self.senders[key]
        except KeyError:
            raise ConfigError(
                f"{self.path}: unknown sender {key!r}; known senders: {', '.join(self.senders) or '(none)'}"
            ) from None


# ---------------------------------------------------------------- YAML loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; remove or rename one of them", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    too_deep = ConfigError(
        f"{path}: values are nested too deeply (more than {MAX_DEPTH} levels of lists and mappings); fix the file"
    )
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except RecursionError:
        raise too_deep from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if nested_deeper_than(data, MAX_DEPTH):
        raise too_deep
    return data


# ---------------------------------------------------------------- validation


def _keypath(*parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    """One phrase for one pydantic error, written for an operator rather than a programmer."""
    kind = error["type"]
    given = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        close = difflib.get_close_matches(name, list(model.model_fields), n=1)
        if close:
            return f"unknown key; did you mean {close[0]!r}?"
        return f"unknown key; valid keys are: {', '.join(model.model_fields)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')} (got {given!r})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {given!r})"
    if kind == "finite_number":
        allowed = _range(model, str(error["loc"][-1]))
        return f"must be a finite number{' ' + allowed if allowed else ''} (got {given!r})"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number (got {given!r})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {given!r})"
    if kind == "string_type":
        return f"must be text (got {given!r})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        allowed = _range(model, str(error["loc"][-1]))
        if allowed is not None:
            return f"must be {allowed} (got {given!r})"
        bound = next(iter(ctx.values()), "")
        words = {
            "greater_than_equal": "at least",
            "greater_than": "more than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return f"must be {words} {bound} (got {given!r})"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping of keys to values (got {type(given).__name__})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _number(value: float) -> str:
    """A bound for people: 600, 86400, 10,000,000."""
    if float(value).is_integer():
        return f"{int(value):,}" if abs(value) >= 1_000_000 else str(int(value))
    return f"{value:g}"


def _range(model: type[BaseModel], name: str) -> str | None:
    """A numeric field's allowed range in words ("from 1 to 16", "more than 0 and at most 600"), if it has both ends."""
    field_info = model.model_fields.get(name)
    low = high = None
    for constraint in field_info.metadata if field_info is not None else []:
        if getattr(constraint, "ge", None) is not None:
            low = f"from {_number(constraint.ge)}"
        elif getattr(constraint, "gt", None) is not None:
            low = f"more than {_number(constraint.gt)} and"
        elif getattr(constraint, "le", None) is not None:
            high = _number(constraint.le)
    if low is None or high is None:
        return None
    return f"{low} to {high}" if low.startswith("from") else f"{low} at most {high}"


def _validate(model: type[BaseModel], data: Any, path: Path, prefix: tuple[Any, ...]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _keypath(*prefix, *first["loc"])
        raise ConfigError(f"{path}: {where}: {_describe(first, model)}") from None


def _check_address(value: str, path: Path, where: str, display_name: bool = True) -> str:
    """The address ``value`` holds as mail will carry it (IDNA domain), or ConfigError naming file and key.

    The same parser as ``send`` (``compose.parse_address``), so what passes
    here is exactly what is sent.
    """
    from .compose import parse_address
    from .errors import InputError

    try:
        return parse_address(value, where=f"{path}: {where}", display_name=display_name).addr_spec
    except InputError as exc:
        raise ConfigError(str(exc)) from None


_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def host_problem(host: str) -> str | None:
    """None if ``host`` is a host name or an IP address smtplib can connect to, else what is wrong with it.

    A name is dot-separated labels of letters, digits, '-' and '_' (an
    internationalized name is checked in its IDNA form); IPv6 addresses are
    written without brackets.
    """
    import ipaddress

    text = host
    if not text.strip():
        return "is empty"
    try:
        ipaddress.ip_address(text)
        return None
    except ValueError:
        pass
    bad = sorted({ch for ch in text if ch.isspace() or ch in "/:@[]<>\\\"',;?#"})
    if bad:
        shown = ", ".join("a space" if ch == " " else repr(ch) for ch in bad)
        return f"is not a host name (it holds {shown})"
    try:
        ascii_name = text.encode("idna").decode("ascii") if not text.isascii() else text
    except UnicodeError:
        return "is not a valid host name"
    labels = ascii_name.removesuffix(".").split(".")
    if len(ascii_name) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return "is not a valid host name (letters, digits, '-' and '.' only, no empty part)"
    return None


def _check_host(host: str, path: Path, where: str) -> None:
    problem = host_problem(host)
    if problem is not None:
        raise ConfigError(
            f"{path}: {where}: {host!r} {problem}; write a name such as smtp.example.com or an IP address"
        )


def _as_mapping(value: Any, path: Path, where: str, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {where}: must be a mapping of {what} (got {type(value).__name__})")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: {where}: key {key!r} must be text; quote it")
    return value


def _refuse_password(raw: dict[str, Any], path: Path, where: str, sender_keys: list[str]) -> None:
    """Refuse a ``password`` key; ``sender_keys`` are the senders it was meant for (all of them for defaults)."""
    if "password" in raw:
        names = [str(key) for key in sender_keys] or ["SENDER"]
        others = f" (and likewise for {', '.join(names[1:])})" if len(names) > 1 else ""
        raise ConfigError(
            f"{path}: {where}.password: passwords do not belong in senders.yaml; delete the key and run "
            f"'mailops password set {names[0]}'{others} to keep it in the system keyring"
        )


def _layers(
    key: str, defaults: dict[str, Any], settings: dict[str, Any], path: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The sender's keys merged from defaults, provider preset and its own keys, and where each came from.

    The preset sits just below the level that names it: ``provider:`` on the
    sender fills what the sender leaves unset, over ``defaults``; ``provider:``
    in ``defaults`` fills what neither the sender nor ``defaults`` set.
    """
    from . import providers

    provider = settings.get("provider", defaults.get("provider"))
    region = settings.get("region", defaults.get("region"))
    preset: dict[str, Any] = {}
    if provider is not None:
        level = "senders." + key if "provider" in settings else "defaults"
        if not isinstance(provider, str):
            raise ConfigError(
                f"{path}: {level}.provider: must be a provider name; known providers: {providers.known()}"
            )
        if region is not None and not isinstance(region, str):
            raise ConfigError(f"{path}: {level}.region: must be text such as eu-west-1 (got {region!r})")
        try:
            preset = providers.preset(provider, region)
        except providers.ProviderError as exc:
            where = "region" if "region" in str(exc) and "unknown provider" not in str(exc) else "provider"
            if where in settings:
                level = "senders." + key
            elif where in defaults:
                level = "defaults"
            raise ConfigError(f"{path}: {level}.{where}: {exc}") from None
    label = f"provider {provider}"
    order = (
        [("defaults", defaults), (label, preset)]
        if "provider" in settings
        else [(label, preset), ("defaults", defaults)]
    )
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in [*order, ("explicit", settings)]:
        for name, value in layer.items():
            merged[name] = value
            sources[name] = source
    return merged, sources


def _build_sender(
    key: str, merged: dict[str, Any], base: Path, path: Path, sources: dict[str, str] | None = None
) -> Sender:
    where = f"senders.{key}"
    fields = _validate(SenderFields, merged, path, ("senders", key))
    sources = dict(sources or {})
    for required in ("email", "host"):
        if getattr(fields, required) in (None, ""):
            raise ConfigError(f"{path}: {where}.{required}: required key is missing; add it (or put it in defaults)")
    if fields.provider and fields.username is None:
        from .providers import PROVIDERS

        needs = PROVIDERS[fields.provider].needs_username
        if needs:
            raise ConfigError(f"{path}: {where}.username: required with provider {fields.provider}; set it to {needs}")
    _check_host(fields.host, path, f"{where}.host")
    email = _check_address(fields.email, path, f"{where}.email", display_name=False)
    if fields.reply_to:
        _check_address(fields.reply_to, path, f"{where}.reply_to")
    security = fields.security or "starttls"
    if fields.security is None:
        sources["security"] = "built-in default"
    if fields.allow_plaintext_auth and security != "none":
        raise ConfigError(
            f"{path}: {where}.allow_plaintext_auth: only meaningful with security: none; remove it "
            f"(security: {security} already encrypts the login)"
        )
    ca_file = None
    if fields.ca_file:
        ca_file = (base / os.path.expanduser(fields.ca_file)).resolve()
        if not ca_file.is_file():
            raise ConfigError(f"{path}: {where}.ca_file: no such file {str(ca_file)!r}; fix the path")
    if fields.name:
        from .controls import header_problem

        problem = header_problem(fields.name)
        if problem is not None:
            raise ConfigError(f"{path}: {where}.name: {problem}")

    def pick(name: str, default: Any) -> Any:
        value = getattr(fields, name)
        if value is None:
            sources[name] = "built-in default"
            return default
        return value

    oauth2 = None
    if fields.oauth2 is not None:
        from .oauth import parse_oauth2

        oauth2 = parse_oauth2(fields.oauth2, provider=fields.provider, host=fields.host, path=path, where=where)
        clash = "password_command" if fields.password_command else "auth" if fields.auth is False else None
        if clash:
            raise ConfigError(
                f"{path}: {where}.{clash}: an oauth2: sender logs in with an access token; remove {clash} or oauth2"
            )

    return Sender(
        key=key,
        email=email,
        host=fields.host,
        port=pick("port", DEFAULT_PORTS[security]),
        security=security,
        username=pick("username", fields.email.strip()),
        display_name=fields.name,
        auth=pick("auth", True),
        allow_plaintext_auth=pick("allow_plaintext_auth", False),
        reply_to=fields.reply_to,
        daily_limit=fields.daily_limit,
        monthly_limit=fields.monthly_limit,
        per_minute=fields.per_minute,
        min_interval=pick("min_interval", 0.0),
        priority=pick("priority", 100),
        active=pick("active", True),
        timeout=pick("timeout", 30.0),
        ca_file=ca_file,
        tls_verify=pick("tls_verify", True),
        password_command=fields.password_command,
        connections=pick("connections", 1),
        max_per_connection=pick("max_per_connection", 100),
        provider=fields.provider,
        limit_unit=pick("limit_unit", "messages"),
        max_message_size=fields.max_message_size,
        sources=tuple(sources.items()),
        oauth2=oauth2,
    )


_ROUTE_KEYS = ["senders", "strategy", "headers", "unsubscribe", "auto_submitted"]


def _build_route(name: str, raw: Any, senders: dict[str, Sender], path: Path) -> Route:
    where = f"routes.{name}"
    strategy = "failover"
    extras: dict[str, Any] = {}
    if isinstance(raw, str):
        members: Any = [raw]
    elif isinstance(raw, list):
        members = raw
    elif isinstance(raw, dict):
        unknown = sorted(str(k) for k in set(raw) - set(_ROUTE_KEYS))
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), _ROUTE_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"a route takes only {', '.join(_ROUTE_KEYS)}"
            raise ConfigError(f"{path}: {where}.{unknown[0]}: unknown key; {hint}")
        try:
            extras = {
                "headers": tuple(mapping_specs(raw.get("headers"), f"{where}.headers")),
                "unsubscribe": unsubscribe_from(raw.get("unsubscribe"), f"{where}.unsubscribe"),
            }
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        auto = raw.get("auto_submitted", False)
        if not isinstance(auto, bool):
            raise ConfigError(f"{path}: {where}.auto_submitted: must be true or false (got {auto!r})")
        extras["auto_submitted"] = auto
        if "senders" not in raw:
            raise ConfigError(f"{path}: {where}.senders: required key is missing; list the senders of this route")
        members = raw["senders"]
        if isinstance(members, str):
            members = [members]
        strategy = raw.get("strategy", "failover")
        allowed = ("failover", "round-robin", "random", "least-used")
        if strategy not in allowed:
            raise ConfigError(f"{path}: {where}.strategy: must be one of {', '.join(allowed)} (got {strategy!r})")
    else:
        raise ConfigError(
            f"{path}: {where}: must be a sender name, a list of sender names, or a mapping with 'senders' "
            f"and 'strategy' (got {type(raw).__name__})"
        )
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{path}: {where}: lists no senders; name at least one sender")
    seen: set[str] = set()
    for index, member in enumerate(members):
        if not isinstance(member, str) or member not in senders:
            close = difflib.get_close_matches(str(member), list(senders), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known senders: {', '.join(senders) or '(none)'}"
            if isinstance(raw, str):
                loc = where
            elif isinstance(raw, dict):
                loc = f"{where}.senders" if isinstance(raw["senders"], str) else f"{where}.senders[{index}]"
            else:
                loc = f"{where}[{index}]"
            raise ConfigError(f"{path}: {loc}: unknown sender {member!r}; {hint}")
        if member in seen:
            raise ConfigError(f"{path}: {where}: sender {member!r} is listed twice; list it once")
        seen.add(member)
    return Route(name=name, senders=tuple(members), strategy=strategy, **extras)


def _build_groups(raw: Any, path: Path) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in _as_mapping(raw, path, "groups", "group names to address lists").items():
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, list) or not members:
            raise ConfigError(f"{path}: groups.{name}: must be a non-empty list of addresses")
        for index, member in enumerate(members):
            if not isinstance(member, str):
                raise ConfigError(f"{path}: groups.{name}[{index}]: must be an address (got {member!r})")
            _check_address(member, path, f"groups.{name}[{index}]")
        groups[name] = tuple(members)
    return groups


def _build_sendmail(raw: Any, routes: dict[str, Route], path: Path) -> SendmailRoutes:
    """The ``sendmail:`` mapping: ``default: ROUTE`` and ``from: {ADDRESS or @DOMAIN: ROUTE}``."""
    top = _as_mapping(raw, path, "sendmail", "'default' and 'from'")
    for key in top:
        if key not in ("default", "from"):
            raise ConfigError(f"{path}: sendmail.{key}: unknown key; valid keys are: default, from")

    def route(value: Any, where: str) -> str:
        if not isinstance(value, str) or value not in routes:
            known = ", ".join(routes) or "(none)"
            raise ConfigError(f"{path}: {where}: {value!r} is not a route; known routes: {known}")
        return value

    default = None if top.get("default") is None else route(top["default"], "sendmail.default")
    by_address: dict[str, str] = {}
    for address, name in _as_mapping(top.get("from"), path, "sendmail.from", "addresses to routes").items():
        where = f"sendmail.from.{address}"
        text = str(address).strip()  # YAML may give a number as a key
        if not text or text == "@":
            raise ConfigError(f"{path}: {where}: must be an address or @domain")
        key = text if text.startswith("@") else _check_address(text, path, where, display_name=False)
        by_address[key.lower()] = route(name, where)
    return SendmailRoutes(default=default, by_address=by_address)


def _database_url(raw: Any, base: Path, path: Path) -> str:
    env = os.environ.get("MAILOPS_DATABASE_URL")
    if env:
        return env
    if raw is None:
        return f"sqlite:///{user_data_dir() / 'mailops.db'}"
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"{path}: database: must be a file path or a database URL (got {raw!r})")
    if "://" in raw:
        return raw
    return f"sqlite:///{(base / os.path.expanduser(raw)).resolve()}"


def parse_config(data: Any, path: Path) -> Config:
    """Validate already-loaded YAML data; ``path`` locates relative paths and error messages."""
    path = Path(path)
    base = path.resolve().parent
    if data is None:
        raise ConfigError(f"{path}: the file is empty; start from senders.yaml.example or run 'mailops init'")
    top = _as_mapping(data, path, "(top level)", "settings")
    for key in top:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys are: {', '.join(TOP_LEVEL_KEYS)}"
            raise ConfigError(f"{path}: {key}: unknown key; {hint}")

    tz_name = top.get("timezone", "UTC")
    try:
        if not isinstance(tz_name, str):
            raise ZoneInfoNotFoundError
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{path}: timezone: unknown time zone {tz_name!r}; use an IANA name such as Europe/Berlin or UTC"
        ) from None

    defaults = _as_mapping(top.get("defaults"), path, "defaults", "sender keys")
    raw_senders_for_hint = top.get("senders")
    _refuse_password(
        defaults, path, "defaults", list(raw_senders_for_hint) if isinstance(raw_senders_for_hint, dict) else []
    )
    default_fields = _validate(SenderFields, defaults, path, ("defaults",))
    if default_fields.host:
        _check_host(default_fields.host, path, "defaults.host")

    raw_senders = _as_mapping(top.get("senders"), path, "senders", "sender names to settings")
    if not raw_senders:
        raise ConfigError(f"{path}: senders: no senders defined; add at least one under 'senders:'")
    senders: dict[str, Sender] = {}
    password_vars: dict[str, str] = {}
    for key, raw in raw_senders.items():
        if not SENDER_NAME_RE.match(key):
            raise ConfigError(
                f"{path}: senders.{key}: a sender name may hold only letters, digits, '.', '_' and '-'; rename it"
            )
        # Two such names would read each other's password from the environment.
        variable = password_env_var(key)
        twin = password_vars.setdefault(variable, key)
        if twin != key:
            raise ConfigError(
                f"{path}: senders.{key}: takes its password from {variable}, as sender {twin!r} does "
                "(the names differ only in case, '-', '.' or '_'); rename one of them"
            )
        settings = _as_mapping(raw, path, f"senders.{key}", "sender keys")
        _refuse_password(settings, path, f"senders.{key}", [key])
        merged, sources = _layers(key, defaults, settings, path)
        senders[key] = _build_sender(key, merged, base, path, sources)

    routes = {
        name: _build_route(name, raw, senders, path)
        for name, raw in _as_mapping(top.get("routes"), path, "routes", "route names to senders").items()
    }
    groups = _build_groups(top.get("groups"), path)

    templates_raw = top.get("templates", "templates")
    if not isinstance(templates_raw, str) or not templates_raw.strip():
        raise ConfigError(f"{path}: templates: must be a folder path (got {templates_raw!r})")

    raw_delivery = top.get("delivery")
    delivery_fields = _validate(_DeliveryModel, {} if raw_delivery is None else raw_delivery, path, ("delivery",))
    delivery = DeliveryPolicy(**{k: v for k, v in delivery_fields.model_dump().items() if v is not None})
    for name in ("retry_initial", "retry_max", "give_up_after"):
        if not 0 <= getattr(delivery, name) <= MAX_RETRY_DURATION:  # also NaN
            raise ConfigError(
                f"{path}: delivery.{name}: must be from 0s to {format_duration(MAX_RETRY_DURATION)} "
                f"(got {(raw_delivery or {}).get(name)!r})"
            )
    if not MIN_LEASE <= delivery.lease <= MAX_LEASE:
        why = (
            "a shorter lease could let another run send a message that is still being sent"
            if delivery.lease < MIN_LEASE
            else "a longer one holds a dead run's messages back for too long"
        )
        raise ConfigError(
            f"{path}: delivery.lease: must be between {format_duration(MIN_LEASE)} and "
            f"{format_duration(MAX_LEASE)} (got {(raw_delivery or {}).get('lease')!r}); {why}"
        )

    return Config(
        path=path,
        timezone_name=tz_name,
        database_url=_database_url(top.get("database"), base, path),
        templates_dir=(base / os.path.expanduser(templates_raw)).resolve(),
        senders=senders,
        routes=routes,
        groups=groups,
        delivery=delivery,
        sendmail=_build_sendmail(top.get("sendmail"), routes, path),
        retention=_retention(top.get("retention"), path),
    )


def _retention(raw: Any, path: Path) -> float:
    """The ``retention:`` key in seconds (default 30 days); ConfigError naming the key and the fix."""
    if raw is None:
        return DEFAULT_RETENTION
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: retention: {exc}, e.g. 30d") from None
    if not MIN_RETENTION <= seconds <= MAX_RETENTION:  # also NaN
        bare = " (a bare number is seconds: write 30d for 30 days)" if isinstance(raw, (int, float)) else ""
        raise ConfigError(
            f"{path}: retention: must be from {format_duration(MIN_RETENTION)} to "
            f"{format_duration(MAX_RETENTION)} (got {raw!r}){bare}; it is how long the body of a sent or "
            "failed message is kept"
        )
    return seconds


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file to use: ``--config``, ``MAILOPS_CONFIG``, ``./senders.yaml``, user config dir."""
    candidates = config_candidates(explicit)
    for candidate, how in candidates:
        if candidate.is_file():
            return candidate
        if how in ("--config", "MAILOPS_CONFIG"):
            raise ConfigError(f"{candidate}: no such config file (given by {how}); check the path")
    looked = ", ".join(str(c) for c, _ in candidates)
    raise ConfigError(
        f"no senders.yaml found (looked in {looked}); run 'mailops init' to create one or pass --config PATH"
    )


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the config."""
    path = find_config_path(explicit)
    return parse_config(_read_yaml(path), path)
