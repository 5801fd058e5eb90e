"""senders.yaml: every malformed file gives one exact line (file, key path, problem, fix); good files load.

Configs are real files written to tmp_path and read with ``load_config(path)``,
the way the CLI reads them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from mailops.config import Route, Sender, SenderFields, load_config
from mailops.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "senders.yaml.example"

SALES = """\
senders:
  sales:
    email: sales@example.com
    host: smtp.gmail.com
"""

SALES_SUPPORT = (
    SALES
    + """\
  support:
    email: support@example.com
    host: smtp.office365.com
"""
)


def sender_with(*lines: str) -> str:
    """A one-sender config whose sender also has ``lines`` (each ``key: value``)."""
    return SALES + "".join(f"    {line}\n" for line in lines)


def write(folder: Path, text: str, name: str = "senders.yaml") -> Path:
    """Write a config file and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | str | None) -> ConfigError:
    """The ConfigError that loading ``path`` must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


SENDER_KEYS = ", ".join(SenderFields.model_fields)

# (id, file content, expected message after "PATH: "; "L:C: " prefixes come first for YAML syntax errors)
MALFORMED = [
    # ---- unknown keys
    (
        "sender key typo",
        sender_with("daly_limit: 500"),
        "senders.sales.daly_limit: unknown key; did you mean 'daily_limit'?",
    ),
    (
        "sender key unknown",
        sender_with("colour: blue"),
        f"senders.sales.colour: unknown key; valid keys are: {SENDER_KEYS}",
    ),
    (
        "top-level typo",
        SALES + "route:\n  default: sales\n",
        "route: unknown key; did you mean 'routes'?",
    ),
    (
        "top-level unknown",
        SALES + "smtp: {}\n",
        "smtp: unknown key; valid keys are: timezone, database, templates, defaults, senders, routes, groups, delivery, sendmail, retention",
    ),
    (
        "defaults key typo",
        "defaults:\n  hots: smtp.gmail.com\n" + SALES,
        "defaults.hots: unknown key; did you mean 'host'?",
    ),
    # ---- passwords
    (
        "password in a sender",
        sender_with("password: hunter2-secret"),
        "senders.sales.password: passwords do not belong in senders.yaml; delete the key and run "
        "'mailops password set sales' to keep it in the system keyring",
    ),
    # ---- values
    (
        "invalid security",
        sender_with("security: tls"),
        "senders.sales.security: must be one of 'starttls', 'ssl' or 'none' (got 'tls')",
    ),
    ("port not a number", sender_with("port: smtp"), "senders.sales.port: must be a whole number (got 'smtp')"),
    ("port a fraction", sender_with("port: 587.5"), "senders.sales.port: must be a whole number (got 587.5)"),
    ("port too large", sender_with("port: 70000"), "senders.sales.port: must be from 1 to 65535 (got 70000)"),
    ("port zero", sender_with("port: 0"), "senders.sales.port: must be from 1 to 65535 (got 0)"),
    (
        "daily_limit zero",
        sender_with("daily_limit: 0"),
        "senders.sales.daily_limit: must be from 1 to 10,000,000 (got 0)",
    ),
    (
        "daily_limit negative",
        sender_with("daily_limit: -5"),
        "senders.sales.daily_limit: must be from 1 to 10,000,000 (got -5)",
    ),
    (
        "monthly_limit not a number",
        sender_with("monthly_limit: lots"),
        "senders.sales.monthly_limit: must be a whole number (got 'lots')",
    ),
    ("timeout zero", sender_with("timeout: 0"), "senders.sales.timeout: must be more than 0 and at most 600 (got 0)"),
    (
        "min_interval with a unit",
        sender_with("min_interval: 2s"),
        "senders.sales.min_interval: must be a number (got '2s')",
    ),
    (
        "too many connections",
        sender_with("connections: 100"),
        "senders.sales.connections: must be from 1 to 16 (got 100)",
    ),
    # ---- out-of-range numbers: bounded, with the allowed range
    (
        "min_interval beyond a day",
        sender_with("min_interval: 1.0e+300"),
        "senders.sales.min_interval: must be from 0 to 86400 (got 1e+300)",
    ),
    (
        "min_interval infinite",
        sender_with("min_interval: .inf"),
        "senders.sales.min_interval: must be a finite number from 0 to 86400 (got inf)",
    ),
    (
        "daily_limit past int64",
        sender_with("daily_limit: 9223372036854775808"),
        "senders.sales.daily_limit: must be from 1 to 10,000,000 (got 9223372036854775808)",
    ),
    (
        "monthly_limit huge",
        sender_with("monthly_limit: 1000000000000000000000000000000"),
        "senders.sales.monthly_limit: must be from 1 to 300,000,000 (got 1000000000000000000000000000000)",
    ),
    (
        "per_minute huge",
        sender_with("per_minute: 10000000"),
        "senders.sales.per_minute: must be from 1 to 100000 (got 10000000)",
    ),
    (
        "priority huge",
        sender_with("priority: 99999999999"),
        "senders.sales.priority: must be from -1,000,000 to 1,000,000 (got 99999999999)",
    ),
    (
        "max_per_connection huge",
        sender_with("max_per_connection: 10000000"),
        "senders.sales.max_per_connection: must be from 1 to 100000 (got 10000000)",
    ),
    (
        "timeout not a number",
        sender_with("timeout: .nan"),
        "senders.sales.timeout: must be a finite number more than 0 and at most 600 (got nan)",
    ),
    (
        "retry_max past a month",
        SALES + "delivery:\n  retry_max: 1.0e+300\n",
        "delivery.retry_max: must be from 0s to 30d (got 1e+300)",
    ),
    (
        "give_up_after a year",
        SALES + "delivery:\n  give_up_after: 365d\n",
        "delivery.give_up_after: must be from 0s to 30d (got '365d')",
    ),
    (
        "retry_initial infinite",
        SALES + "delivery:\n  retry_initial: .inf\n",
        "delivery.retry_initial: must be from 0s to 30d (got inf)",
    ),
    (
        "nested 100,000 deep",
        SALES + "groups:\n  g: " + "[" * 100_000 + "]" * 100_000 + "\n",
        "values are nested too deeply (more than 50 levels of lists and mappings); fix the file",
    ),
    (
        "nested 60 deep",
        SALES + "groups:\n  g: " + "[" * 60 + "]" * 60 + "\n",
        "values are nested too deeply (more than 50 levels of lists and mappings); fix the file",
    ),
    (
        "two senders, one password variable",
        SALES + "  Sales:\n    email: sales2@example.com\n    host: smtp.gmail.com\n",
        "senders.Sales: takes its password from MAILOPS_PASSWORD_SALES, as sender 'sales' does "
        "(the names differ only in case, '-', '.' or '_'); rename one of them",
    ),
    ("active not a boolean", sender_with("active: maybe"), "senders.sales.active: must be true or false (got 'maybe')"),
    (
        "email not text",
        "senders:\n  sales:\n    email: 42\n    host: h\n",
        "senders.sales.email: must be text (got 42)",
    ),
    (
        "display name with a line break",
        sender_with('name: "Sales\\nBcc: victim@example.com"'),
        "senders.sales.name: the control character '\\n' is not allowed in a header (subject, name, address); "
        "remove it from the value",
    ),
    (
        "display name with a vertical tab",
        sender_with('name: "Sales\\vTeam"'),
        "senders.sales.name: the control character '\\x0b' is not allowed in a header (subject, name, address); "
        "remove it from the value",
    ),
    (
        "display name with a file separator",
        sender_with('name: "Sales\\x1cTeam"'),
        "senders.sales.name: the control character '\\x1c' is not allowed in a header (subject, name, address); "
        "remove it from the value",
    ),
    (
        "display name with ESC",
        sender_with('name: "Sales\\e[2J"'),
        "senders.sales.name: the control character '\\x1b' is not allowed in a header (subject, name, address); "
        "remove it from the value",
    ),
    # ---- required keys
    (
        "missing email",
        "senders:\n  sales:\n    host: smtp.gmail.com\n",
        "senders.sales.email: required key is missing; add it (or put it in defaults)",
    ),
    (
        "missing host",
        "senders:\n  sales:\n    email: sales@example.com\n",
        "senders.sales.host: required key is missing; add it (or put it in defaults)",
    ),
    (
        "missing host, defaults without one",
        "defaults:\n  port: 465\n  security: ssl\nsenders:\n  sales:\n    email: sales@example.com\n",
        "senders.sales.host: required key is missing; add it (or put it in defaults)",
    ),
    # ---- addresses
    (
        "invalid email",
        "senders:\n  sales:\n    email: sales-at-example.com\n    host: h\n",
        "senders.sales.email: 'sales-at-example.com' is not a valid email address: An email address must have "
        "an @-sign.",
    ),
    (
        "email with a display name",
        "senders:\n  sales:\n    email: Sales <sales@example.com>\n    host: h\n",
        "senders.sales.email: 'Sales <sales@example.com>': only the address belongs here; put the display name "
        "under 'name'",
    ),
    (
        "invalid reply_to",
        sender_with("reply_to: Sales Team <sales-team>"),
        "senders.sales.reply_to: 'Sales Team <sales-team>' is not a valid email address: An email address must "
        "have an @-sign.",
    ),
    # ---- sender names and shapes
    (
        "sender name with spaces",
        "senders:\n  sales team:\n    email: sales@example.com\n    host: h\n",
        "senders.sales team: a sender name may hold only letters, digits, '.', '_' and '-'; rename it",
    ),
    (
        "sender name a number",
        "senders:\n  2024:\n    email: sales@example.com\n    host: h\n",
        "senders: key 2024 must be text; quote it",
    ),
    ("sender is a list", "senders:\n  sales: [a, b]\n", "senders.sales: must be a mapping of sender keys (got list)"),
    ("senders missing", "timezone: UTC\n", "senders: no senders defined; add at least one under 'senders:'"),
    ("senders empty", "senders:\n", "senders: no senders defined; add at least one under 'senders:'"),
    ("senders a list", "senders: [sales]\n", "senders: must be a mapping of sender names to settings (got list)"),
    (
        "defaults a list",
        "defaults: [smtp.gmail.com]\n" + SALES,
        "defaults: must be a mapping of sender keys (got list)",
    ),
    # ---- TLS options
    (
        "ca_file missing",
        sender_with("ca_file: certs/company-ca.pem"),
        "senders.sales.ca_file: no such file '{dir}/certs/company-ca.pem'; fix the path",
    ),
    (
        "allow_plaintext_auth with starttls",
        sender_with("security: starttls", "allow_plaintext_auth: true"),
        "senders.sales.allow_plaintext_auth: only meaningful with security: none; remove it "
        "(security: starttls already encrypts the login)",
    ),
    (
        "allow_plaintext_auth with ssl",
        sender_with("security: ssl", "allow_plaintext_auth: true"),
        "senders.sales.allow_plaintext_auth: only meaningful with security: none; remove it "
        "(security: ssl already encrypts the login)",
    ),
    # ---- routes
    (
        "route names an unknown sender",
        SALES_SUPPORT + "routes:\n  renewal: [slaes]\n",
        "routes.renewal[0]: unknown sender 'slaes'; did you mean 'sales'?",
    ),
    (
        "route mapping names an unknown sender",
        SALES_SUPPORT + "routes:\n  alerts:\n    senders: [sales, suport]\n",
        "routes.alerts.senders[1]: unknown sender 'suport'; did you mean 'support'?",
    ),
    (
        "route sender with no close match",
        SALES_SUPPORT + "routes:\n  renewal: [billing]\n",
        "routes.renewal[0]: unknown sender 'billing'; known senders: sales, support",
    ),
    (
        "route bad strategy",
        SALES_SUPPORT + "routes:\n  quarterly:\n    senders: [sales, support]\n    strategy: roundrobin\n",
        "routes.quarterly.strategy: must be one of failover, round-robin, random, least-used (got 'roundrobin')",
    ),
    (
        "route mapping unknown key",
        SALES_SUPPORT + "routes:\n  quarterly:\n    senders: [sales, support]\n    stratgy: random\n",
        "routes.quarterly.stratgy: unknown key; did you mean 'strategy'?",
    ),
    (
        "route mapping without senders",
        SALES + "routes:\n  quarterly:\n    strategy: random\n",
        "routes.quarterly.senders: required key is missing; list the senders of this route",
    ),
    (
        "empty route list",
        SALES + "routes:\n  renewal: []\n",
        "routes.renewal: lists no senders; name at least one sender",
    ),
    (
        "route without a value",
        SALES + "routes:\n  renewal:\n",
        "routes.renewal: must be a sender name, a list of sender names, or a mapping with 'senders' and "
        "'strategy' (got NoneType)",
    ),
    (
        "route lists a sender twice",
        SALES + "routes:\n  renewal: [sales, sales]\n",
        "routes.renewal: sender 'sales' is listed twice; list it once",
    ),
    ("routes a list", SALES + "routes: [sales]\n", "routes: must be a mapping of route names to senders (got list)"),
    # ---- groups
    (
        "group with an invalid address",
        SALES + "groups:\n  finance-team:\n    - Dana <dana@example.com>\n    - accounts-payable\n",
        "groups.finance-team[1]: 'accounts-payable' is not a valid email address: An email address must have an "
        "@-sign.",
    ),
    # CVE-2023-27043: one parser for config and send; an entry is exactly one address
    (
        "group entry with a second address after it",
        SALES + "groups:\n  team:\n    - alice@example.com <bob@evil.com>\n",
        "groups.team[0]: 'alice@example.com <bob@evil.com>' is not exactly one address (a second address, text "
        "after '>' or an unbalanced quote or bracket); write it as 'Name <user@example.com>' or 'user@example.com'",
    ),
    (
        "group entry with two angle-addrs",
        SALES + "groups:\n  team:\n    - ok@example.com\n    - Evil <a@example.com> <b@evil.com>\n",
        "groups.team[1]: 'Evil <a@example.com> <b@evil.com>' is not exactly one address (a second address, text "
        "after '>' or an unbalanced quote or bracket); write it as 'Name <user@example.com>' or 'user@example.com'",
    ),
    (
        "group entry with a stray quote",
        SALES + "groups:\n  team:\n    - 'a@example.com\"<b@evil.com>'\n",
        "groups.team[0]: 'a@example.com\"<b@evil.com>' is not exactly one address (a second address, text "
        "after '>' or an unbalanced quote or bracket); write it as 'Name <user@example.com>' or 'user@example.com'",
    ),
    (
        "group entry with two addresses",
        SALES + "groups:\n  team:\n    - a@example.com, b@example.com\n",
        "groups.team[0]: 'a@example.com, b@example.com' holds more than one address; give each address its own entry",
    ),
    (
        "group entry with an unquoted comma in the name",
        SALES + "groups:\n  team:\n    - Müller, Jürgen <jm@example.com>\n",
        "groups.team[0]: 'Müller, Jürgen <jm@example.com>': a display name with a comma must be in double quotes; "
        "write '\"Müller, Jürgen\" <jm@example.com>'",
    ),
    (
        "reply_to with a second address",
        sender_with("reply_to: Sales <sales@example.com> <bob@evil.com>"),
        "senders.sales.reply_to: 'Sales <sales@example.com> <bob@evil.com>' is not exactly one address (a second "
        "address, text after '>' or an unbalanced quote or bracket); write it as 'Name <user@example.com>' or "
        "'user@example.com'",
    ),
    (
        "group not a list",
        SALES + "groups:\n  finance-team: 42\n",
        "groups.finance-team: must be a non-empty list of addresses",
    ),
    (
        "group empty",
        SALES + "groups:\n  finance-team: []\n",
        "groups.finance-team: must be a non-empty list of addresses",
    ),
    (
        "group member not text",
        SALES + "groups:\n  finance-team: [dana@example.com, 7]\n",
        "groups.finance-team[1]: must be an address (got 7)",
    ),
    # ---- other top-level keys
    (
        "unknown timezone",
        "timezone: Europe/Berln\n" + SALES,
        "timezone: unknown time zone 'Europe/Berln'; use an IANA name such as Europe/Berlin or UTC",
    ),
    (
        "timezone not text",
        "timezone: 5\n" + SALES,
        "timezone: unknown time zone 5; use an IANA name such as Europe/Berlin or UTC",
    ),
    ("templates not a path", SALES + "templates: 5\n", "templates: must be a folder path (got 5)"),
    ("database empty", SALES + "database: ''\n", "database: must be a file path or a database URL (got '')"),
    (
        "bad duration",
        SALES + "delivery:\n  retry_initial: 5 minutes\n",
        "delivery.retry_initial: must be a duration such as 30, 5m, 1h or 2d (got '5 minutes')",
    ),
    ("negative duration", SALES + "delivery:\n  lease: -5\n", "delivery.lease: must not be negative (got -5)"),
    (
        "delivery key typo",
        SALES + "delivery:\n  retry_maxx: 1h\n",
        "delivery.retry_maxx: unknown key; did you mean 'retry_max'?",
    ),
    ("delivery not a mapping", SALES + "delivery: 5m\n", "delivery: must be a mapping of keys to values (got str)"),
    (
        "retention a bare number",
        SALES + "retention: 30\n",
        "retention: must be from 1d to 3650d (got 30) (a bare number is seconds: write 30d for 30 days); "
        "it is how long the body of a sent or failed message is kept",
    ),
    (
        "retention too long",
        SALES + "retention: 4000d\n",
        "retention: must be from 1d to 3650d (got '4000d'); it is how long the body of a sent or failed message "
        "is kept",
    ),
    (
        "retention not a duration",
        SALES + "retention: a month\n",
        "retention: must be a duration such as 30, 5m, 1h or 2d (got 'a month'), e.g. 30d",
    ),
    (
        "retention negative",
        SALES + "retention: -1d\n",
        "retention: must be a duration such as 30, 5m, 1h or 2d (got '-1d'), e.g. 30d",
    ),
    # ---- the file itself
    ("top level a list", "- sales\n- support\n", "(top level): must be a mapping of settings (got list)"),
    ("empty file", "", "the file is empty; start from senders.yaml.example or run 'mailops init'"),
    ("only comments", "# TODO\n", "the file is empty; start from senders.yaml.example or run 'mailops init'"),
]

YAML_SYNTAX = [
    (
        "unclosed bracket",
        "senders:\n  sales:\n    email: [oops\n",
        "4:1: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "tab indentation",
        "senders:\n  sales:\n\temail: x\n",
        "3:1: invalid YAML: found character '\\t' that cannot start any token",
    ),
    (
        "duplicate sender",
        SALES + "  sales:\n    email: other@example.com\n    host: h\n",
        "5:3: invalid YAML: duplicate key 'sales'; remove or rename one of them",
    ),
    (
        "duplicate key in a sender",
        SALES + "    host: smtp.office365.com\n",
        "5:5: invalid YAML: duplicate key 'host'; remove or rename one of them",
    ),
]


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_config_gives_one_exact_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    error = config_error(path)
    assert str(error) == f"{path}: " + message.replace("{dir}", str(tmp_path.resolve()))
    assert error.exit_code == 2
    assert "\n" not in str(error)


@pytest.mark.parametrize(("text", "message"), [case[1:] for case in YAML_SYNTAX], ids=[case[0] for case in YAML_SYNTAX])
def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    error = config_error(path)
    assert str(error) == f"{path}:{message}"
    assert error.exit_code == 2


def test_password_is_never_echoed(tmp_path: Path) -> None:
    for text in (sender_with("password: hunter2-secret"), "defaults:\n  password: hunter2-secret\n" + SALES):
        error = config_error(write(tmp_path, text))
        assert "hunter2-secret" not in str(error)
        expected = "password: passwords do not belong in senders.yaml; delete the key and run 'mailops password set "
        assert expected in str(error)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "senders.yaml"
    path.write_bytes(b"senders:\n  sales:\n    name: Caf\xe9\n")
    assert str(config_error(path)) == f"{path}: not UTF-8 text; save the file as UTF-8"


# ---------------------------------------------------------------- gaps found while writing these tests


def test_password_in_defaults_names_the_senders(tmp_path: Path) -> None:
    path = write(tmp_path, "defaults:\n  password: hunter2-secret\n" + SALES_SUPPORT)
    assert str(config_error(path)) == (
        f"{path}: defaults.password: passwords do not belong in senders.yaml; delete the key and run "
        "'mailops password set sales' (and likewise for support) to keep it in the system keyring"
    )


@pytest.mark.parametrize("line", ["port: true", "daily_limit: yes", "timeout: on"])
def test_booleans_are_not_numbers(tmp_path: Path, line: str) -> None:
    key = line.split(":")[0]
    path = write(tmp_path, sender_with(line))
    assert str(config_error(path)) == f"{path}: senders.sales.{key}: must be a number (got true)"


def test_delivery_must_be_a_mapping_even_when_empty(tmp_path: Path) -> None:
    path = write(tmp_path, SALES + "delivery: []\n")
    assert str(config_error(path)) == f"{path}: delivery: must be a mapping of keys to values (got list)"


def test_single_name_route_reports_its_own_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, SALES + "routes:\n  renewal: slaes\n")
    assert str(config_error(path)) == f"{path}: routes.renewal: unknown sender 'slaes'; did you mean 'sales'?"


# ---------------------------------------------------------------- finding the file


def test_config_not_found_lists_where_it_looked(isolated_home) -> None:
    error = config_error(None)
    assert str(error) == (
        f"no senders.yaml found (looked in {isolated_home.cwd / 'senders.yaml'}, "
        f"{isolated_home.config_dir / 'senders.yaml'}); run 'mailops init' to create one or pass --config PATH"
    )
    assert error.exit_code == 2


def test_mailops_config_pointing_to_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home
) -> None:
    write(isolated_home.cwd, SALES)  # must not be used instead: the operator asked for another file
    missing = tmp_path / "nowhere" / "senders.yaml"
    monkeypatch.setenv("MAILOPS_CONFIG", str(missing))
    assert str(config_error(None)) == f"{missing}: no such config file (given by MAILOPS_CONFIG); check the path"


def test_explicit_config_pointing_to_a_missing_file(tmp_path: Path, isolated_home) -> None:
    write(isolated_home.cwd, SALES)
    missing = tmp_path / "typo.yaml"
    assert str(config_error(missing)) == f"{missing}: no such config file (given by --config); check the path"


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home) -> None:
    def config_for(who: str) -> str:
        return f"senders:\n  {who}:\n    email: {who}@example.com\n    host: h\n"

    explicit = write(tmp_path / "explicit", config_for("explicit"))
    from_env = write(tmp_path / "env", config_for("env"))
    write(isolated_home.cwd, config_for("cwd"))
    write(isolated_home.config_dir, config_for("user"))
    monkeypatch.setenv("MAILOPS_CONFIG", str(from_env))

    def winner(explicit_path: Path | None) -> str:
        return next(iter(load_config(explicit_path).senders))

    assert winner(explicit) == "explicit"  # --config beats everything
    assert winner(None) == "env"  # then MAILOPS_CONFIG
    monkeypatch.delenv("MAILOPS_CONFIG")
    assert winner(None) == "cwd"  # then ./senders.yaml
    assert load_config(None).path == Path.cwd() / "senders.yaml"
    (isolated_home.cwd / "senders.yaml").unlink()
    assert winner(None) == "user"  # then the user config folder (MAILOPS_HOME/config)
    assert load_config(None).path == isolated_home.config_dir / "senders.yaml"


# ---------------------------------------------------------------- good files


def test_defaults_are_merged_into_each_sender(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
defaults:
  host: smtp.gmail.com
  port: 587
  security: starttls
  daily_limit: 500
  timeout: 20
senders:
  sales:
    email: sales@example.com
    name: Example Sales
  finance:
    email: finance@example.com
    daily_limit: 2000
    username: billing-login@example.com
""",
    )
    config = load_config(path)
    assert config.senders["sales"] == Sender(
        key="sales",
        email="sales@example.com",
        host="smtp.gmail.com",
        port=587,
        security="starttls",
        username="sales@example.com",  # the email when not given
        display_name="Example Sales",
        daily_limit=500,
        timeout=20.0,
    )
    finance = config.senders["finance"]
    assert (finance.host, finance.daily_limit, finance.username, finance.timeout) == (
        "smtp.gmail.com",
        2000,  # the sender's own key wins
        "billing-login@example.com",
        20.0,
    )


def test_unset_keys_take_their_documented_defaults(tmp_path: Path, isolated_home) -> None:
    config = load_config(write(tmp_path, SALES))
    assert config.senders["sales"] == Sender(
        key="sales",
        email="sales@example.com",
        host="smtp.gmail.com",
        port=587,
        security="starttls",
        username="sales@example.com",
    )
    sales = config.senders["sales"]
    assert (sales.auth, sales.tls_verify, sales.active, sales.priority, sales.connections) == (True, True, True, 100, 1)
    assert config.timezone_name == "UTC"
    assert config.routes == {} and config.groups == {}
    assert config.templates_dir == tmp_path.resolve() / "templates"
    assert config.database_url == f"sqlite:///{isolated_home.data_dir / 'mailops.db'}"
    assert (config.delivery.retry_initial, config.delivery.retry_max) == (300.0, 3600.0)
    assert (config.delivery.give_up_after, config.delivery.lease) == (172800.0, 300.0)
    assert config.retention == 30 * 86400.0
    assert load_config(write(tmp_path, SALES + "retention: 90d\n")).retention == 90 * 86400.0


@pytest.mark.parametrize(("security", "port"), [("starttls", 587), ("ssl", 465), ("none", 25)])
def test_default_port_per_security_mode(tmp_path: Path, security: str, port: int) -> None:
    config = load_config(write(tmp_path, sender_with(f"security: {security}")))
    assert (config.senders["sales"].security, config.senders["sales"].port) == (security, port)


def test_explicit_port_wins_over_the_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sender_with("security: ssl", "port: 2465")))
    assert config.senders["sales"].port == 2465


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, isolated_home) -> None:
    folder = tmp_path / "etc" / "mailops"
    (folder / "certs").mkdir(parents=True)
    (folder / "certs" / "ca.pem").write_text("not parsed here\n")
    path = write(
        folder,
        "templates: mail-templates\ndatabase: data/mailops.db\n" + sender_with("ca_file: certs/ca.pem"),
    )
    assert Path.cwd() != folder  # the current folder must not matter
    config = load_config(path)
    assert config.templates_dir == folder.resolve() / "mail-templates"
    assert config.database_url == f"sqlite:///{folder.resolve() / 'data' / 'mailops.db'}"
    assert config.senders["sales"].ca_file == folder.resolve() / "certs" / "ca.pem"


def test_database_url_is_kept_and_mailops_database_url_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, SALES + "database: postgresql+psycopg://mailops@db.example.com/mailops\n")
    assert load_config(path).database_url == "postgresql+psycopg://mailops@db.example.com/mailops"
    monkeypatch.setenv("MAILOPS_DATABASE_URL", "sqlite:////srv/mailops/shared.db")
    assert load_config(path).database_url == "sqlite:////srv/mailops/shared.db"


def test_routes_as_string_list_and_mapping(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SALES_SUPPORT
        + """\
routes:
  renewal: sales
  payment: [support, sales]
  quarterly:
    senders: [sales, support]
    strategy: round-robin
  alerts:
    senders: support
  default:
    senders: [sales]
""",
    )
    assert load_config(path).routes == {
        "renewal": Route("renewal", ("sales",), "failover"),
        "payment": Route("payment", ("support", "sales"), "failover"),
        "quarterly": Route("quarterly", ("sales", "support"), "round-robin"),
        "alerts": Route("alerts", ("support",), "failover"),
        "default": Route("default", ("sales",), "failover"),
    }


@pytest.mark.parametrize("strategy", ["failover", "round-robin", "random", "least-used"])
def test_every_strategy_is_accepted(tmp_path: Path, strategy: str) -> None:
    path = write(tmp_path, SALES_SUPPORT + f"routes:\n  pool: {{senders: [sales, support], strategy: {strategy}}}\n")
    assert load_config(path).routes["pool"].strategy == strategy


def test_groups_keep_display_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SALES
        + "groups:\n  finance-team:\n    - Dana Ledger <dana@example.com>\n    - ap@example.com\n"
        + "  admins: ops@example.com\n",
    )
    assert load_config(path).groups == {
        "finance-team": ("Dana Ledger <dana@example.com>", "ap@example.com"),
        "admins": ("ops@example.com",),
    }


def test_delivery_durations(tmp_path: Path) -> None:
    path = write(
        tmp_path, SALES + "delivery:\n  retry_initial: 90\n  retry_max: 2h\n  give_up_after: 3d\n  lease: 30s\n"
    )
    delivery = load_config(path).delivery
    assert (delivery.retry_initial, delivery.retry_max, delivery.give_up_after, delivery.lease) == (
        90.0,
        7200.0,
        259200.0,
        30.0,
    )


def test_local_relay_without_login(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, sender_with("security: none", "auth: false")))
    sales = config.senders["sales"]
    assert (sales.security, sales.port, sales.auth, sales.allow_plaintext_auth) == ("none", 25, False, False)
    config = load_config(write(tmp_path, sender_with("security: none", "allow_plaintext_auth: true")))
    assert config.senders["sales"].allow_plaintext_auth is True


# ---------------------------------------------------------------- senders.yaml.example


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "senders.yaml"
    shutil.copy(EXAMPLE, path)
    config = load_config(path)
    assert config.timezone_name == "Europe/Berlin"
    assert set(config.senders) == {"sales", "finance", "support", "marketing-1", "marketing-2", "relay"}
    assert (config.senders["sales"].host, config.senders["sales"].port) == ("smtp.gmail.com", 587)
    assert config.senders["finance"].host == "smtp.gmail.com"  # from defaults
    assert config.senders["support"].host == "smtp.office365.com"
    assert (config.senders["marketing-2"].security, config.senders["marketing-2"].port) == ("ssl", 465)
    assert config.senders["relay"].auth is False
    assert set(config.routes) == {"renewal", "payment", "offline-alert", "quarterly", "default"}
    quarterly = config.routes["quarterly"]
    assert (quarterly.senders, quarterly.strategy) == (("marketing-1", "marketing-2"), "round-robin")
    assert [(h.name, h.value) for h in quarterly.headers] == [("X-Campaign", "quarterly-{{ today[:7] }}")]
    assert quarterly.unsubscribe is not None and quarterly.unsubscribe.url is not None
    assert config.routes["offline-alert"].auto_submitted is True
    assert config.routes["payment"].senders == ("finance", "sales")
    assert set(config.groups) == {"finance-team", "system-admins"}
    # no sender reads a password from a command in the example: every one is in the keyring or env
    assert all(sender.password_command is None for sender in config.senders.values())


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    keys = [
        "timezone", "database", "templates", "delivery", "defaults", "senders", "routes", "groups",
        "retry_initial", "retry_max", "give_up_after", "lease", "strategy",
        *SenderFields.model_fields,
    ]  # fmt: skip
    undocumented = [key for key in keys if not re.search(rf"^\s*#?\s*{re.escape(key)}:", text, re.MULTILINE)]
    assert undocumented == []
    for strategy in ("failover", "round-robin", "random", "least-used"):
        assert strategy in text
    assert "mailops password set sales" in text and "MAILOPS_PASSWORD_SALES" in text
    assert not re.search(r"^\s*password:", text, re.MULTILINE)
