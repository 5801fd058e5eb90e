"""Real providers: intranet and test addresses, provider presets, recipient-counted quotas."""

from __future__ import annotations

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
