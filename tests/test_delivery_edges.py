"""Delivery, outbox and enqueue paths the rest of the suite did not reach (found by branch coverage).

Each test drives the real CLI against a real STARTTLS+AUTH server and a real
SQLite outbox, and checks what the server received and what the outbox and
the log hold afterwards.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from mailops.config import DeliveryPolicy
from mailops.outbox import Outbox
from mailops.store import Store
from tests.fixtures_cli import log_json
from tests.smtp_servers import closed_port

PASSWORD = "s3cret-pass"
USERS = {f"{name}@example.com": PASSWORD for name in ("sales", "finance")}


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users=USERS)


@pytest.fixture
def sales(workspace, srv):
    """One sender, the default route."""
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    return workspace


def _status(workspace) -> dict[str, str]:
    [(status,)] = workspace.query("SELECT recipient_status FROM messages")
    return json.loads(status)


# ---------------------------------------------------------------- recipients refused for now


def test_a_temporarily_refused_recipient_is_retried_alone_and_the_accepted_one_is_not_sent_twice(sales, srv, cli):
    srv.rcpt_hook = lambda addr: "450 4.2.1 mailbox busy" if addr.startswith("busy") else None

    first = cli("send", "--to", "ok@example.org", "--to", "busy@example.org", "--subject", "S", "--body", "B")

    assert first.exit_code == 1, first.output  # deferred: not everything was done
    [received] = srv.messages
    assert received.rcpt_tos == ["ok@example.org"]
    assert sales.states() == {"deferred": 1}
    assert _status(sales) == {"ok@example.org": "sent"}
    [row] = log_json(cli)
    assert row["outcome"] == "partial" and "busy@example.org: 450 4.2.1 mailbox busy" in row["detail"]

    srv.rcpt_hook = None
    assert cli("queue", "retry", "--all").exit_code == 0
    again = cli("deliver")

    assert again.exit_code == 0, again.output
    assert [m.rcpt_tos for m in srv.messages] == [["ok@example.org"], ["busy@example.org"]]
    assert sales.states() == {"sent": 1}
    assert _status(sales) == {"ok@example.org": "sent", "busy@example.org": "sent"}


def test_every_recipient_refused_one_for_now_one_for_good_defers_for_the_temporary_one(sales, srv, cli):
    replies = {"busy": "450 4.2.1 mailbox busy", "gone": "550 5.1.1 no such user"}
    srv.rcpt_hook = lambda addr: replies[addr.split("@")[0]]

    result = cli("send", "--to", "busy@example.org", "--to", "gone@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 1, result.output
    assert srv.messages == []
    assert sales.states() == {"deferred": 1}  # the 450 may pass later: not a permanent failure
    assert _status(sales) == {"gone@example.org": "failed: 550 5.1.1 no such user"}


# ---------------------------------------------------------------- failover builds the other sender's headers


def test_after_failover_from_and_reply_to_are_the_sender_that_really_sent(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": {
                **workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1),
                "port": closed_port(),
            },
            "finance": workspace.sender(
                srv, email="finance@example.com", password=PASSWORD, priority=2, reply_to="billing@example.com"
            ),
        },
        routes={"default": ["sales", "finance"]},
    )

    result = cli("send", "--to", "cust@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 0, result.output
    [received] = srv.messages
    assert received.mail_from == "finance@example.com"
    assert received.message["From"] == "finance@example.com"
    assert received.message["Reply-To"] == "billing@example.com"
    log = log_json(cli)  # newest first
    assert [(r["sender"], r["outcome"]) for r in log] == [("finance", "sent"), ("sales", "failed")]
    assert log[1]["detail"].endswith("trying the next sender")


# ---------------------------------------------------------------- deliver --limit, queue list filters


def test_deliver_limit_sends_that_many_and_leaves_the_rest_queued(sales, srv, cli):
    data = sales.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--queue-only").exit_code == 0

    result = cli("deliver", "--limit", "2")

    assert result.exit_code == 0, result.output
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == ["u0@example.org", "u1@example.org"]
    assert sales.states() == {"sent": 2, "queued": 3}


def test_queue_list_filters_by_batch_and_by_sender(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD),
        },
        routes={"default": "sales", "bills": "finance"},
    )
    send = ["--subject", "S", "--body", "B", "--queue-only"]
    assert cli("send", "--to", "a@example.org", "--batch", "nov", *send).exit_code == 0
    assert cli("send", "--to", "b@example.org", "--batch", "dec", *send).exit_code == 0
    assert cli("send", "--to", "c@example.org", "--route", "bills", *send).exit_code == 0

    def listed(*args: str) -> list[str]:
        result = cli("queue", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [m["recipients"][0] for m in json.loads(result.stdout)["messages"]]

    assert listed("--batch", "nov") == ["a@example.org"]
    assert listed("--sender", "finance") == ["c@example.org"]  # queued: matched by the sender it is meant for
    assert listed("--sender", "sales") == ["b@example.org", "a@example.org"]
    assert listed("--batch", "none-such") == []


# ---------------------------------------------------------------- enqueue: long lists of bad rows, dry runs


def test_more_bad_rows_than_are_listed_end_with_how_many_more(sales, srv, cli):
    rows = "".join(f"bad{i}@,{i}\n" for i in range(25))
    data = sales.root / "c.csv"
    data.write_text("email,n\n" + rows, encoding="utf-8")

    result = cli("send", "--data", data, "--subject", "S", "--body", "B")

    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("mailops: error: 25 of 25 rows are invalid, nothing was sent;")
    assert len(lines) == 1 + 20 + 1
    assert lines[1].startswith("  c.csv row 1: column 'email': 'bad0@'")
    assert lines[20].startswith("  c.csv row 20: column 'email': 'bad19@'")
    assert lines[-1] == "  ... and 5 more"
    assert srv.connections == 0
    assert sales.query("SELECT COUNT(*) FROM messages") == [(0,)]


def test_a_dry_run_that_meets_a_broken_data_file_midway_is_one_line_exit_2(sales, srv, cli):
    data = sales.root / "c.csv"
    data.write_text('email,n\na@example.org,1\nb@example.org,"2\n', encoding="utf-8")  # unclosed quote on row 2

    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--dry-run")

    assert result.exit_code == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("mailops: error: ") and "c.csv" in line
    assert srv.connections == 0
    assert sales.query("SELECT COUNT(*) FROM messages") == [(0,)]


# ---------------------------------------------------------------- outbox calls with nothing to do


def test_outbox_calls_with_nothing_to_do_write_nothing(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'o.db'}")
    outbox = Outbox(store, DeliveryPolicy())
    try:
        outbox.renew("w1", [], now=1.0)
        assert outbox.unclaim("w1", [], now=1.0) == 0
        with store.write() as conn:
            Outbox.log(conn, [])
        assert outbox.counts() == {}
        with pytest.raises(ValueError, match="nothing selected"):
            outbox.retry(1.0)  # the CLI asks for an id, --batch or --all before it gets here
    finally:
        store.close()


# ---------------------------------------------------------------- pacing that does not fit, inactive senders


def test_a_pacing_wait_longer_than_the_deadline_leaves_the_message_for_a_later_run(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, min_interval=30)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(2)])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--queue-only").exit_code == 0

    result = cli("deliver", "--max-seconds", "5")

    assert result.exit_code == 1, result.output  # one deferred
    assert [m.rcpt_tos for m in srv.messages] == [["u0@example.org"]]
    assert "  quota: min_interval of 30 s for sales" in result.stdout.splitlines()
    [(reason, later)] = workspace.query("SELECT reason, due_at > updated_at FROM messages WHERE state = 'deferred'")
    assert (reason, later) == ("quota: min_interval of 30 s for sales", 1)
    assert workspace.states() == {"sent": 1, "deferred": 1}


def test_an_inactive_sender_in_a_route_is_passed_over(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1, active=False),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )

    result = cli("send", "--to", "cust@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 0, result.output
    assert [m.mail_from for m in srv.messages] == ["finance@example.com"]
    assert [(r["sender"], r["outcome"]) for r in log_json(cli)] == [("finance", "sent")]


# ---------------------------------------------------------------- routes: usage errors, a sender removed after queueing


def test_route_and_sender_together_or_no_default_route_are_one_line_exit_2(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"bills": "sales"}
    )
    send = ["--to", "cust@example.org", "--subject", "S", "--body", "B"]

    both = cli("send", "--route", "bills", "--sender", "sales", *send)
    neither = cli("send", *send)

    assert both.exit_code == 2
    assert both.stderr.strip() == "mailops: error: --route and --sender exclude each other; pass one of them"
    assert neither.exit_code == 2
    [line] = neither.stderr.strip().splitlines()
    assert line.startswith("mailops: error: no --route or --sender given and ") and line.endswith(
        "has no 'default' route; pass --route NAME, --sender NAME, or add a 'default' route"
    )
    assert srv.connections == 0
    assert not workspace.db_path.exists()  # refused before the outbox was opened


def test_a_queued_message_whose_sender_left_senders_yaml_goes_through_the_next_one(workspace, srv, cli):
    both = {
        "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1),
        "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
    }
    workspace.write_config(both, routes={"default": ["sales", "finance"]})
    queued = cli("send", "--to", "cust@example.org", "--subject", "S", "--body", "B", "--queue-only")
    assert queued.exit_code == 0, queued.output
    workspace.write_config({"finance": both["finance"]}, routes={"default": ["finance"]})

    result = cli("deliver")

    assert result.exit_code == 0, result.output
    assert [m.mail_from for m in srv.messages] == ["finance@example.com"]
    assert workspace.states() == {"sent": 1}


def test_a_sender_at_its_daily_limit_is_not_asked_again_in_the_run_and_failover_takes_the_rest(workspace, srv, cli):
    workspace.write_config(
        {
            "sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, priority=1, daily_limit=1),
            "finance": workspace.sender(srv, email="finance@example.com", password=PASSWORD, priority=2),
        },
        routes={"default": ["sales", "finance"]},
    )
    # more than one claim's worth (50), so later claims meet sales already known to be exhausted
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(60)])

    result = cli("send", "--data", data, "--subject", "S", "--body", "B")

    assert result.exit_code == 0, result.output
    assert Counter(m.mail_from for m in srv.messages) == {"sales@example.com": 1, "finance@example.com": 59}
    assert len({m.rcpt_tos[0] for m in srv.messages}) == 60  # none twice
    assert workspace.states() == {"sent": 60}
    assert workspace.query("SELECT count FROM usage WHERE sender = 'sales' AND period LIKE 'day:%'") == [(1,)]
