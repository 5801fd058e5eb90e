"""Real providers: intranet and test addresses, provider presets, recipient-counted quotas."""

from __future__ import annotations

import json
import re

import pytest

PASSWORD = "s3cret-pass"


@pytest.fixture
def intranet_srv(smtp_server):
    return smtp_server(users={"ops@corp.local": PASSWORD})


def test_intranet_and_test_addresses_go_everywhere_an_address_goes(workspace, intranet_srv, cli):
    """Sender, reply_to, groups, data files and options all take .local, localhost, .home.arpa, .test, .internal."""
    workspace.write_config(
        {"ops": workspace.sender(intranet_srv, email="ops@corp.local", password=PASSWORD, reply_to="noc@Corp.Local")},
        routes={"default": "ops"},
        groups={"admins": ["root@localhost", "Ops Desk <desk@nas.home.arpa>"]},
    )
    workspace.template("t", "Hi {{ name }}\n", "Body\n")
    data = workspace.csv(
        "rows.csv", [{"email": "qa@staging.test", "name": "QA"}, {"email": "alerts@host.internal", "name": "NOC"}]
    )

    grouped = cli("send", "--group", "admins", "--cc", "lan@printer.lan", "--subject", "s", "--body", "b")
    merged = cli("send", "--template", "t", "--data", data)

    assert (grouped.exit_code, grouped.stderr) == (0, "")
    assert (merged.exit_code, merged.stderr) == (0, "")
    received = sorted(tuple(m.rcpt_tos) for m in intranet_srv.messages)
    assert received == [
        ("alerts@host.internal",),
        ("qa@staging.test",),
        ("root@localhost", "desk@nas.home.arpa", "lan@printer.lan"),
    ]
    first = intranet_srv.messages[0].message
    assert first["From"] == "ops@corp.local"
    assert first["Reply-To"] == "noc@corp.local"
    assert {m.mail_from for m in intranet_srv.messages} == {"ops@corp.local"}


@pytest.mark.parametrize(
    ("where", "address"),
    [("email", "ops@corp.invalid"), ("group", "x@relay.onion"), ("group", "x@1.in-addr.arpa")],
)
def test_names_that_never_hold_a_mailbox_stay_refused(workspace, cli, where, address):
    sender = workspace.sender(email=address if where == "email" else "ops@corp.local")
    groups = {"g": [address]} if where == "group" else None
    path = workspace.write_config({"ops": sender}, routes={"default": "ops"}, groups=groups)

    result = cli("doctor")

    key = "senders.ops.email" if where == "email" else "groups.g[0]"
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"mailops: error: {path}: {key}: {address!r} is not a valid email address: The part after the @-sign is a special-use or "
        "reserved name that cannot be used with email."
    )


# ---------------------------------------------------------------- provider presets

M365_HINT = (
    "Microsoft 365 refuses the login: SMTP AUTH may be disabled for the mailbox (the admin turns on "
    "'Authenticated SMTP' for it), or basic authentication is off for the tenant: log in with OAuth2 "
    "(an 'oauth2:' mapping); with basic auth allowed, check the password with 'mailops password set ms'"
)


def _load(tmp_path, text):
    from mailops.config import load_config

    path = tmp_path / "senders.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def test_presets_fill_what_is_unset_and_explicit_keys_win(tmp_path):
    config = _load(
        tmp_path,
        """
defaults:
  provider: gmail
  daily_limit: 400
senders:
  g:
    email: g@example.com
  ms:
    email: ms@example.com
    provider: microsoft365
    per_minute: 10
  ses:
    email: ses@example.com
    provider: amazon-ses
    region: eu-west-1
    username: AKIAEXAMPLE
  sg:
    email: sg@example.com
    provider: sendgrid
    host: smtp.eu.example.net
  mg:
    email: mg@example.com
    provider: mailgun
    region: eu
""",
    )
    g, ms, ses, sg, mg = (config.senders[k] for k in ("g", "ms", "ses", "sg", "mg"))
    # provider in defaults: the preset sits below defaults' own keys
    assert (g.host, g.port, g.security, g.daily_limit, g.limit_unit) == (
        "smtp.gmail.com",
        587,
        "starttls",
        400,
        "messages",
    )
    assert dict(g.sources)["host"] == "provider gmail" and dict(g.sources)["daily_limit"] == "defaults"
    # provider on the sender: the preset sits above defaults, below the sender's own keys
    assert (ms.host, ms.daily_limit, ms.limit_unit, ms.per_minute, ms.max_message_size) == (
        "smtp.office365.com", 10000, "recipients", 10, 35 * 1024 * 1024,
    )  # fmt: skip
    assert {k: dict(ms.sources)[k] for k in ("daily_limit", "per_minute", "username", "provider")} == {
        "daily_limit": "provider microsoft365",
        "per_minute": "explicit",
        "username": "built-in default",
        "provider": "explicit",
    }
    assert (ses.host, ses.username, ses.limit_unit, ses.daily_limit) == (
        "email-smtp.eu-west-1.amazonaws.com", "AKIAEXAMPLE", "recipients", 400,
    )  # fmt: skip
    assert (sg.host, sg.username, dict(sg.sources)["host"]) == ("smtp.eu.example.net", "apikey", "explicit")
    assert mg.host == "smtp.eu.mailgun.org"


@pytest.mark.parametrize(
    ("sender", "message"),
    [
        (
            "provider: office365",
            "senders.s.provider: unknown provider 'office365'; known providers: gmail, google-workspace, microsoft365, "
            "outlook, yahoo, icloud, fastmail, zoho, amazon-ses, sendgrid, mailgun",
        ),
        (
            "provider: amazon-ses\n    username: AKIA",
            "senders.s.region: amazon-ses needs 'region:' (the AWS region of your SES identity, such as eu-west-1 or "
            "us-east-1)",
        ),
        (
            "provider: amazon-ses\n    region: Frankfurt\n    username: AKIA",
            "senders.s.region: region 'Frankfurt' is not an AWS region name such as eu-west-1 or us-east-1",
        ),
        (
            "provider: amazon-ses\n    region: us-east-1",
            "senders.s.username: required with provider amazon-ses; set it to the SMTP user name of your SES SMTP "
            "credentials (not the email address)",
        ),
        (
            "provider: gmail\n    region: eu",
            "senders.s.region: 'region' applies only to amazon-ses and mailgun, not gmail; remove it",
        ),
        (
            "provider: microsoft365\n    limit_unit: people",
            "senders.s.limit_unit: must be one of 'messages' or 'recipients' (got 'people')",
        ),
        (
            "provider: gmail\n    max_message_size: 0",
            "senders.s.max_message_size: must be from 1 to 2,000,000,000 (got 0)",
        ),
    ],
)
def test_bad_provider_settings_are_one_line_and_exit_2(workspace, cli, sender, message):
    path = workspace.config_path
    path.write_text(f"senders:\n  s:\n    email: s@example.com\n    {sender}\n", encoding="utf-8")

    result = cli("--config", path, "doctor")

    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr == f"mailops: error: {path}: {message}\n"


def test_test_smtp_gives_the_providers_hint_when_the_login_is_refused(workspace, smtp_server, cli):
    """Explicit host/port/security aim a microsoft365 sender at the local server; its 535 gets Microsoft's hint."""
    server = smtp_server(users={"ms@example.com": "right"})
    workspace.write_config(
        {"ms": workspace.sender(server, email="ms@example.com", password="wrong", provider="microsoft365")}
    )

    result = cli("test-smtp", "ms")

    assert result.exit_code == 1
    assert f"  hint: {M365_HINT}\n" in result.stdout
    assert "535" in result.stdout
    assert server.messages == []


def test_doctor_shows_each_setting_and_where_it_came_from(workspace, cli):
    workspace.write_config(
        {"ms": {"email": "ms@example.com", "provider": "microsoft365", "per_minute": 10, "__password": "x"}},
        routes={"default": "ms"},
        defaults={"timeout": 12, "daily_limit": 50},
    )

    text = cli("doctor").stdout
    data = cli("doctor", "--json").stdout

    block = text[text.index("sender   ms") :].splitlines()[:16]
    assert block[0] == "sender   ms (provider microsoft365): effective settings"
    rows = {line.split()[0]: line.split()[1:] for line in block[1:]}
    assert rows["host"] == ["smtp.office365.com", "provider", "microsoft365"]
    assert rows["daily_limit"] == ["10000", "provider", "microsoft365"]  # the sender's preset is over defaults
    assert rows["per_minute"] == ["10", "explicit"]
    assert rows["timeout"] == ["12", "defaults"]
    assert rows["monthly_limit"] == ["not", "set", "built-in", "default"]
    assert rows["username"] == ["ms@example.com", "built-in", "default"]
    senders = {d["check"].removeprefix("settings "): d["settings"] for d in json.loads(data) if d["status"] == "info"}
    assert senders["ms"]["limit_unit"] == {"value": "recipients", "source": "provider microsoft365"}
    assert senders["ms"]["security"] == {"value": "starttls", "source": "provider microsoft365"}


def test_intranet_addresses_through_a_public_provider_warn_in_doctor_and_dry_run(workspace, cli):
    workspace.write_config(
        {"ms": {"email": "ms@example.com", "provider": "microsoft365", "__password": "x"}},
        routes={"default": "ms"},
        groups={"admins": ["root@localhost", "Ops <ops@corp.local>", "a@example.com"]},
    )
    (workspace.root / "templates").mkdir()

    doctor = cli("doctor")
    dry = cli("send", "--dry-run", "--group", "admins", "--to", "b@example.com", "--subject", "s", "--body", "b")
    public = cli("send", "--dry-run", "--to", "b@example.com", "--subject", "s", "--body", "b")

    assert doctor.exit_code == 0, doctor.output
    assert (
        "WARNING  group admins: root@localhost and 1 more is an intranet or test address; sent through a public "
        "provider (ms) it cannot arrive: route such mail through your own relay\n"
    ) in doctor.stdout
    assert (dry.exit_code, dry.stderr) == (
        0,
        "mailops: warning: ms sends through Microsoft 365, which delivers on the public Internet: root@localhost and "
        "1 more is an intranet or test address it cannot deliver; route such mail through your own relay\n",
    )
    assert (public.exit_code, public.stderr) == (0, "")
    assert workspace.states() == {}


def test_intranet_addresses_through_your_own_relay_do_not_warn(workspace, intranet_srv, cli):
    workspace.write_config(
        {"ops": workspace.sender(intranet_srv, email="ops@corp.local", password=PASSWORD)},
        routes={"default": "ops"},
        groups={"admins": ["root@localhost"]},
    )
    (workspace.root / "templates").mkdir()

    doctor = cli("doctor")
    dry = cli("send", "--dry-run", "--group", "admins", "--subject", "s", "--body", "b")

    assert "WARNING" not in doctor.stdout
    assert (dry.exit_code, dry.stderr) == (0, "")


def test_doctor_does_not_warn_about_a_group_when_a_relay_can_carry_it(workspace, intranet_srv, cli):
    """With both a public provider and an own relay, a group's intranet members may well go through the relay."""
    workspace.write_config(
        {
            "ops": workspace.sender(intranet_srv, email="ops@corp.local", password=PASSWORD),
            "ms": {"email": "ms@example.com", "provider": "microsoft365", "__password": "x"},
        },
        routes={"default": "ms", "alerts": "ops"},
        groups={"admins": ["root@localhost"]},
    )
    (workspace.root / "templates").mkdir()

    doctor = cli("doctor")
    dry_relay = cli("send", "--dry-run", "--route", "alerts", "--group", "admins", "--subject", "s", "--body", "b")
    dry_public = cli("send", "--dry-run", "--group", "admins", "--subject", "s", "--body", "b")

    assert (doctor.exit_code, "WARNING" in doctor.stdout) == (0, False)
    assert (dry_relay.exit_code, dry_relay.stderr) == (0, "")
    assert (dry_public.exit_code, dry_public.stderr) == (
        0,
        "mailops: warning: ms sends through Microsoft 365, which delivers on the public Internet: root@localhost "
        "is an intranet or test address it cannot deliver; route such mail through your own relay\n",
    )


def test_a_message_over_max_message_size_is_an_input_error_before_queueing(workspace, srv_any, cli):
    workspace.write_config(
        {"s": workspace.sender(srv_any, email="s@example.com", password=PASSWORD, max_message_size=3000)},
        routes={"default": "s"},
    )
    big = workspace.root / "big.bin"
    big.write_bytes(b"x" * 4000)

    result = cli("send", "--to", "a@example.com", "--subject", "s", "--body", "b", "--attach", big)

    assert result.exit_code == 2
    assert re.fullmatch(
        r"mailops: error: message: the message is [67],\d{3} bytes; sender s takes at most 3,000 \(max_message_size\); "
        r"send smaller attachments or links to them \(nothing was sent\)\n",
        result.stderr,
    ), result.stderr
    assert srv_any.messages == []
    assert workspace.states() == {}


@pytest.fixture
def srv_any(smtp_server):
    return smtp_server(users={"s@example.com": PASSWORD})


# ---------------------------------------------------------------- quotas that count recipients


def test_dry_run_counts_recipients_against_a_recipient_counted_limit(workspace, srv_any, cli):
    workspace.write_config(
        {
            "s": workspace.sender(
                srv_any, email="s@example.com", password=PASSWORD, daily_limit=10, limit_unit="recipients"
            )
        },
        routes={"default": "s"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])
    cc = ["--cc", "x@example.org", "--cc", "y@example.org"]  # 3 recipients a message: 3 fit in 10, 2 wait

    result = cli("send", "--data", data, *cc, "--subject", "s", "--body", "b", "--dry-run")
    as_json = cli("send", "--data", data, *cc, "--subject", "s", "--body", "b", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    assert "2 of them would be deferred: the senders' remaining quota is s 10 recipients\n" in result.stdout
    assert json.loads(as_json.stdout)["would_defer_for_quota"] == 2
    assert srv_any.connections == 0 and workspace.states() == {}


def test_a_smaller_message_still_goes_where_a_larger_one_waits(workspace, srv_any, cli):
    """Daily limit 5 recipients, messages to 4, 3 and 1: one of the large two waits, the 1-recipient one still goes.

    (Which of the large two goes first depends on the worker reserving its next message ahead.)
    """
    workspace.write_config(
        {
            "s": workspace.sender(
                srv_any, email="s@example.com", password=PASSWORD, daily_limit=5, limit_unit="recipients"
            )
        },
        routes={"default": "s"},
    )
    for recipients in (4, 3, 1):
        to = [arg for i in range(recipients) for arg in ("--to", f"m{recipients}r{i}@example.org")]
        queued = cli("send", *to, "--subject", f"to {recipients}", "--body", "b", "--queue-only")
        assert queued.exit_code == 0, queued.output

    result = cli("deliver")

    assert result.exit_code == 1  # one message deferred
    sent = sorted(len(m.rcpt_tos) for m in srv_any.messages)
    assert sent in ([1, 3], [1, 4])
    [(subject, reason)] = workspace.query("SELECT subject, reason FROM messages WHERE state = 'deferred'")
    waiting = 7 - sent[1]
    assert (subject, reason) == (
        f"to {waiting}",
        f"quota: daily limit of 5 recipients has no room for {waiting} more for s",
    )
    [(used,)] = workspace.query("SELECT count FROM usage WHERE period LIKE 'day:%'")
    assert used == sum(sent)


def test_a_message_too_large_for_the_rest_of_the_day_does_not_hold_back_smaller_ones(workspace, srv_any, cli):
    """Daily limit 10 recipients: 55 messages to 4, then two to 1. Two 4s fit (8), the other 4s wait, the 1s fill
    the rest (10). More messages than one claim (50), so the 1s reach the sender after the 4s were refused: a
    recipient-counted limit that cannot take a large message is not taken as used up for a small one."""
    workspace.write_config(
        {
            "s": workspace.sender(
                srv_any, email="s@example.com", password=PASSWORD, daily_limit=10, limit_unit="recipients"
            )
        },
        routes={"default": "s"},
    )
    data = workspace.csv("big.csv", [{"email": f"u{i}@example.org"} for i in range(55)])
    cc = [arg for i in range(3) for arg in ("--cc", f"cc{i}@example.org")]
    assert cli("send", "--data", data, *cc, "--subject", "big", "--body", "b", "--queue-only").exit_code == 0
    for index in range(2):
        queued = cli("send", "--to", f"small{index}@example.org", "--subject", "small", "--body", "b", "--queue-only")
        assert queued.exit_code == 0, queued.output

    result = cli("deliver")

    assert result.exit_code == 1
    assert sorted(len(m.rcpt_tos) for m in srv_any.messages) == [1, 1, 4, 4]
    assert workspace.states() == {"sent": 4, "deferred": 53}
    [(used,)] = workspace.query("SELECT count FROM usage WHERE period LIKE 'day:%'")
    assert used == 10
