"""``password status`` in words: where each sender's secret comes from, never the value; booleans in --json."""

from __future__ import annotations

import json
import re

import keyring

from tests.fixtures_cli import Workspace
from tests.keyring_backend import FailingKeyring, write_entry

_NO_ACCESS_TOKEN = "no access token yet (one is fetched at the first send or test-smtp)"


def _table_rows(text: str) -> dict[str, list[str]]:
    """The rows of the table (under its heading and rule): cells are separated by two blanks or more."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"─"})
    rows = {}
    for line in lines[rule + 1 :]:
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) < 2:
            break  # the table ends: the keyring backend line follows
        rows[cells[0]] = cells[1:]
    return rows


def test_password_status_in_words_with_a_keyring(workspace: Workspace, cli, keyring_file, monkeypatch):
    monkeypatch.setenv("MAILOPS_PASSWORD_ALERTS", "from-the-environment")
    monkeypatch.setenv("MAILOPS_OAUTH_M365", "rt-env")
    workspace.write_config(
        {
            "sales": workspace.sender(None, password="pw-sales"),
            "alerts": workspace.sender(None, email="alerts@example.com", password=None),
            "finance": workspace.sender(None, email="finance@example.com", password=None, active=False),
            "m365": workspace.sender(
                None, email="m365@example.com", password=None, host="smtp.office365.com", oauth2={"client_id": "x"}
            ),
            "kr": workspace.sender(
                None, email="kr@example.com", password=None, host="smtp.office365.com", oauth2={"client_id": "x"}
            ),
            "cmd": workspace.sender(None, email="cmd@example.com", password=None, oauth2={"token_command": "echo t"}),
        }
    )
    write_entry(keyring_file, "mailops", "oauth2:kr", "rt-kr")

    table = cli("password", "status")

    assert table.exit_code == 0, table.output
    assert _table_rows(table.stdout) == {
        "sales": ["sales@example.com", "yes", "stored (keyring)"],
        "alerts": ["alerts@example.com", "yes", "from MAILOPS_PASSWORD_ALERTS"],
        "finance": ["finance@example.com", "no", "missing"],
        # an OAuth2 sender's table entry also says what is known of its access token (none yet: no run so far)
        "m365": ["m365@example.com", "yes", f"OAuth token: from MAILOPS_OAUTH_M365; {_NO_ACCESS_TOKEN}"],
        "kr": ["kr@example.com", "yes", f"OAuth token: stored (keyring); {_NO_ACCESS_TOKEN}"],
        "cmd": ["cmd@example.com", "yes", "OAuth token: from token_command"],
    }
    for secret in ("pw-sales", "from-the-environment", "rt-env", "rt-kr"):
        assert secret not in table.output

    data = json.loads(cli("password", "status", "--json").stdout)
    assert [(r["sender"], r["active"], r["available"], r["password"]) for r in data["senders"]] == [
        ("sales", True, True, "stored (keyring)"),
        ("alerts", True, True, "from MAILOPS_PASSWORD_ALERTS"),
        ("finance", False, False, "missing"),
        ("m365", True, True, "OAuth token: from MAILOPS_OAUTH_M365"),
        ("kr", True, True, "OAuth token: stored (keyring)"),
        ("cmd", True, True, "OAuth token: from token_command"),
    ]
    assert data["backend_usable"] is True


def test_password_status_on_a_headless_machine_says_missing_and_why(workspace: Workspace, cli, monkeypatch):
    workspace.write_config({"sales": workspace.sender(None, password=None)})
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    keyring.set_keyring(FailingKeyring())

    table = cli("password", "status")

    assert table.exit_code == 0, table.output
    assert _table_rows(table.stdout)["sales"] == [workspace.sender(None)["email"], "yes", "missing (no usable keyring)"]
    assert table.stdout.splitlines()[-1].startswith(
        "keyring backend refused: keyring backend tests.keyring_backend.FailingKeyring (priority 0) cannot store "
        "passwords; set MAILOPS_PASSWORD_<SENDER> or password_command"
    )
    data = json.loads(cli("password", "status", "--json").stdout)
    assert (data["backend_usable"], data["senders"][0]["available"], data["senders"][0]["source"]) == (
        False,
        False,
        "keyring unavailable",
    )
