"""``tls_verify: false`` warns in every command that connects and in doctor; a host that is no host name is refused."""

from __future__ import annotations

import pytest

PASSWORD = "s3cret-pass"
WARNING = (
    "mailops: warning: tls_verify: false for sales: the server's certificate is not checked, so anyone on the way "
    "can read the mail and the password; use it only for testing (trust a private CA with ca_file instead)"
)


@pytest.fixture
def unverified(workspace, smtp_server):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {
            "sales": workspace.sender(
                srv, email="sales@example.com", password=PASSWORD, ca_file=None, tls_verify=False
            ),
            "other": workspace.sender(srv, email="sales@example.com", password=PASSWORD),
        },
        routes={"default": "sales"},
    )
    (workspace.root / "templates").mkdir()
    return workspace, srv


@pytest.mark.parametrize(
    "command",
    [
        ["send", "--to", "a@example.com", "--subject", "S", "--body", "B", "-q"],
        ["send", "--to", "a@example.com", "--subject", "S", "--body", "B", "--queue-only", "-q"],
        ["deliver", "-q"],
        ["test-smtp", "sales"],
        ["doctor"],
    ],
    ids=["send", "send --queue-only", "deliver", "test-smtp", "doctor"],
)
def test_tls_verify_false_warns_once_on_stderr(unverified, cli, command):
    _workspace, srv = unverified

    result = cli(*command)

    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [WARNING]
    assert len(srv.messages) == (1 if command[:1] == ["send"] and "--queue-only" not in command else 0)


def test_a_sender_with_verification_is_not_named(unverified, cli):
    result = cli("test-smtp", "other")

    assert result.exit_code == 0, result.output
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("smtp example.com", "is not a host name (it holds a space)"),
        ("smtp://smtp.example.com", "is not a host name (it holds '/', ':')"),
        ("smtp..example.com", "is not a valid host name (letters, digits, '-' and '.' only, no empty part)"),
    ],
)
@pytest.mark.parametrize("command", [["doctor"], ["send", "--to", "a@example.com", "--subject", "S", "--body", "B"]])
def test_a_host_that_is_no_host_name_is_refused_with_file_and_key(workspace, smtp_server, cli, host, problem, command):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, host=host)},
        routes={"default": "sales"},
    )

    result = cli(*command)

    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"mailops: error: {workspace.config_path}: senders.sales.host: {host!r} {problem}; write a name such as "
        "smtp.example.com or an IP address"
    ]
    assert srv.connections == 0


def test_a_bad_host_in_defaults_names_defaults(workspace, cli):
    workspace.write_config({"sales": {"email": "sales@example.com"}}, defaults={"host": "smtp example.com"})

    result = cli("doctor")

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"mailops: error: {workspace.config_path}: defaults.host: 'smtp example.com' is not a host name (it holds "
        "a space); write a name such as smtp.example.com or an IP address"
    ]
