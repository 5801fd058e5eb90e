"""``--json`` for scripts: the same conventions in every command, read back as a script would.

Times are ISO 8601 with their offset (in the config's zone), durations are
seconds to the millisecond, lists are arrays (never JSON text inside JSON),
counts honour the filters, and ``doctor --json`` is a list of findings. The
data comes from real sends to an aiosmtpd server; every command runs as a
separate process.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.fixtures_cli import Workspace, run_mailops
from tests.smtp_servers import refusing

ZONE = ZoneInfo("America/New_York")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")
GONE = "gone@example.org"


@pytest.fixture
def filled(workspace: Workspace, server, cli) -> Workspace:
    """New York time; one message to two recipients sent, one refused (failed), one due in an hour, one suppressed."""
    workspace.write_config({"sales": workspace.sender(server)}, routes={"default": "sales"}, timezone=ZONE.key)
    (workspace.root / "templates").mkdir()
    server.rcpt_hook = refusing(GONE)
    assert cli("send", "--to", "a@example.org", "--to", "b@example.org", "--subject", "S", "--body", "b").exit_code == 0
    assert cli("send", "--to", GONE, "--subject", "S", "--body", "b", "--batch", "K").exit_code == 1
    assert cli("send", "--to", "later@example.org", "--subject", "S", "--body", "b", "--at", "+1h").exit_code == 0
    assert cli("suppress", "add", "stop@example.org", "--reason", "asked").exit_code == 0
    assert cli("test-smtp").exit_code == 0
    return workspace


def _json(*args: str) -> Any:
    result = run_mailops(*args, "--json")
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _conventions(value: Any, path: str = "") -> int:
    """Assert the --json conventions everywhere in ``value``; returns how many times it checked."""
    times = 0
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if key == "at" or key.endswith("_at"):
                if item is not None:
                    assert isinstance(item, str) and ISO.match(item), (where, item)
                    moment = datetime.fromisoformat(item)
                    assert moment.utcoffset() == moment.astimezone(ZONE).utcoffset(), (where, item)  # the config's zone
                    times += 1
            elif key in ("duration", "seconds") or key.endswith("_s"):
                assert item is None or round(item, 3) == item, (where, item)
            elif key in ("recipients", "candidates"):
                assert isinstance(item, list), (where, item)
            times += _conventions(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            times += _conventions(item, f"{path}[{i}]")
    elif isinstance(value, float):
        assert value < 1e9, (path, value)  # no epoch seconds left anywhere
    return times


@pytest.mark.parametrize(
    "args",
    [
        ["log"],
        ["queue", "list"],
        ["queue", "show", "1"],
        ["stats"],
        ["stats", "--days", "3"],
        ["suppress", "list"],
        ["test-smtp"],
        ["doctor"],
        ["password", "status"],
        ["db", "status"],
        ["deliver"],
    ],
    ids=" ".join,
)
def test_every_json_follows_the_conventions(filled, args):
    data = _json(*args)
    checked = _conventions(data)
    if args[0] in ("log", "queue", "stats", "suppress"):
        assert checked > 0, data  # these hold times: they were checked


def test_log_json_times_recipients_and_durations(filled):
    rows = _json("log")
    sent = [r for r in rows if r["outcome"] == "sent"]
    assert [r["recipients"] for r in sent] == [["a@example.org", "b@example.org"]]
    assert datetime.fromisoformat(sent[0]["at"]).tzinfo is not None
    assert isinstance(sent[0]["duration"], float) and len(str(sent[0]["duration"]).partition(".")[2]) <= 3


def test_queue_list_json_arrays_and_counts_that_honour_the_filters(filled):
    everything = _json("queue", "list")
    assert everything["counts"] == {"sent": 1, "failed": 1, "queued": 1}
    assert (everything["total"], everything["more"]) == (3, 0)
    first = everything["messages"][-1]
    assert first["recipients"] == ["a@example.org", "b@example.org"] and first["candidates"] == ["sales"]

    batch = _json("queue", "list", "--batch", "K")
    assert batch["counts"] == {"failed": 1} and [m["recipients"] for m in batch["messages"]] == [[GONE]]
    queued = _json("queue", "list", "--state", "queued", "--limit", "1")
    assert queued["counts"] == {"queued": 1} and queued["messages"][0]["due_at"] > queued["messages"][0]["created_at"]
    limited = _json("queue", "list", "--limit", "1")
    assert (limited["total"], limited["more"], len(limited["messages"])) == (3, 2, 1)


def test_queue_show_json_decodes_the_recipient_status(filled):
    shown = _json("queue", "show", "1")
    assert shown["message"]["recipient_status"] == {"a@example.org": "sent", "b@example.org": "sent"}
    assert shown["message"]["recipients"] == ["a@example.org", "b@example.org"]
    assert [a["outcome"] for a in shown["attempts"]] == ["sent"]


def test_doctor_json_is_a_list_of_findings(filled):
    findings = _json("doctor")
    assert all(set(f) == {"check", "status", "detail", "fix"} for f in findings if f["status"] != "info")
    assert {f["status"] for f in findings} <= {"ok", "warning", "problem", "info"}
    assert {"check": "sender sales", "status": "ok", "detail": "sales: password from keyring", "fix": None} in findings
    [settings] = [f for f in findings if f["status"] == "info"]
    assert settings["check"] == "settings sales" and settings["settings"]["port"]["source"] == "explicit"


def test_stats_json_has_one_shape_with_and_without_days(filled):
    plain, days = _json("stats"), _json("stats", "--days", "2")
    assert plain["timezone"] == days["timezone"] == ZONE.key
    assert set(plain) == {"timezone", "since_at", "senders"}
    assert set(days) == {"timezone", "since_at", "senders", "days", "without_sender"}
    [row] = plain["senders"]
    assert (row["sender"], row["attempts"], row["health"]) == ("sales", 2, "healthy")
    assert days["senders"][0]["daily"]["failed"][-1] == 1 and days["without_sender"] is None


def test_test_smtp_json_steps_in_seconds_to_the_millisecond(filled):
    [result] = _json("test-smtp")
    assert result["ok"] is True and [s["step"] for s in result["steps"]][:1] == ["connect"]
    assert all(round(s["seconds"], 3) == s["seconds"] for s in result["steps"])
