"""The outbox under real processes: overlapping deliver runs, SIGKILLed sends, retries with backoff."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter

import pytest

from tests.fixtures_cli import log_json, popen_mailops, run_mailops

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD})


def _rows(workspace, n: int, name: str = "c.csv"):
    return workspace.csv(name, [{"email": f"u{i}@example.org", "n": i} for i in range(n)])


# Six overlapping deliver processes against one daily limit: tests/test_shared_store.py runs that
# test on SQLite and on PostgreSQL.


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 3])
def test_sigkilled_sends_lose_nothing_and_duplicate_at_most_once_per_kill(
    workspace, srv, cli, lease_floor, connections
):
    """A SIGKILL at any instant doubles at most one message per worker (one sender with one connection, or
    three workers whose outcomes share group transactions): each outcome is committed before that worker's
    next end of data reaches the server."""
    lease_floor(1.0)  # the killed processes' claims expire within the test
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, connections=connections)},
        routes={"default": "sales"},
        delivery={"lease": "2s"},
    )
    total = 2000
    data = _rows(workspace, total)
    args = ["send", "--data", data, "--subject", "S {{ n }}", "--body", "B {{ n }}", "--batch", "campaign", "-q"]
    rng = random.Random(20261123)
    kills = 0
    for _ in range(4):
        proc = popen_mailops(*args)
        time.sleep(rng.uniform(1.0, 4.0))  # somewhere in validating, queueing or sending
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    time.sleep(2.5)  # let the dead processes' leases expire
    # The operator reruns the same command: it queues what is missing and finishes the whole batch.
    rerun = run_mailops(*args, timeout=300)
    assert (rerun.exit_code, rerun.stdout, rerun.stderr) == (0, "", ""), rerun.output
    final = run_mailops("deliver", "--json", timeout=300)
    assert final.exit_code == 0, final.output
    assert json.loads(final.stdout)["sent"] == 0  # the rerun left nothing for cron

    received = Counter(m.rcpt_tos[0] for m in srv.messages)
    assert set(received) == {f"u{i}@example.org" for i in range(total)}  # none lost
    duplicates = sum(n - 1 for n in received.values())
    workers = connections  # one sender: a worker per connection
    assert duplicates <= kills * workers
    states = workspace.states()
    # rows a killed send had only staged were never queued (its rerun queued them again); deliver drops them after a day
    states.pop("staged", None)
    assert states == {"sent": total}
    # a redelivered message keeps its Message-ID, so receivers can drop the copy
    ids = Counter((m.rcpt_tos[0], m.message["Message-ID"]) for m in srv.messages)
    assert len(ids) == total


def test_451_twice_then_accepted_on_the_third_attempt_with_growing_delays(workspace, srv, cli):
    from tests.smtp_servers import fail_first

    # Delays long enough that "not due yet" holds on a loaded machine; the test moves the due time
    # forward in the database instead of sleeping through them (the backoff itself is what it checks).
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        delivery={"retry_initial": 30, "retry_max": "10m"},
    )
    srv.data_hook = fail_first(2, "451 4.3.0 Try again later")

    first = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B")
    assert first.exit_code == 1 and "451" in first.stdout
    assert workspace.states() == {"deferred": 1}
    assert cli("deliver").exit_code == 0  # not due yet: nothing to do
    assert len(srv.messages) == 0
    dues = []
    for _ in range(2):  # the second and the third attempt
        dues.append(workspace.query("SELECT due_at - updated_at FROM messages")[0][0])
        workspace.query("UPDATE messages SET due_at = updated_at")  # the retry is due now
        cli("deliver")
    assert workspace.states() == {"sent": 1}
    assert len(srv.messages) == 1
    assert dues == pytest.approx([30.0, 60.0], abs=0.05)  # doubling backoff
    attempts = list(reversed(log_json(cli)))
    assert [(r["outcome"], r["smtp_code"]) for r in attempts] == [("deferred", 451), ("deferred", 451), ("sent", 250)]
    shown = json.loads(cli("queue", "show", "1", "--json").stdout)
    assert shown["message"]["attempts"] == 3 and len(shown["attempts"]) == 3


def test_permanent_550_on_data_fails_at_once(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    srv.data_hook = lambda envelope: "550 5.7.1 Message rejected as spam"

    result = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 1
    assert workspace.states() == {"failed": 1}
    [(reason,)] = workspace.query("SELECT reason FROM messages")
    assert "550" in reason and "spam" in reason
    assert [(r["outcome"], r["smtp_code"]) for r in log_json(cli)] == [("failed", 550)]


def test_temporary_failures_past_the_give_up_age_fail_with_the_reason(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        delivery={"retry_initial": 0.3, "retry_max": 0.3, "give_up_after": 1},
    )
    srv.data_hook = lambda envelope: "451 4.3.0 Try again later"

    cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B")
    for _ in range(30):  # bounded
        time.sleep(0.3)
        result = cli("deliver")
        if workspace.states() == {"failed": 1}:
            break
    assert workspace.states() == {"failed": 1}
    assert result.exit_code == 1
    [(reason, attempts)] = workspace.query("SELECT reason, attempts FROM messages")
    assert reason.startswith(f"gave up after {attempts} attempts")
    assert "451" in reason
    assert srv.messages == []


def test_queue_shows_states_and_retry_cancel_purge(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    data = _rows(workspace, 3)
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--batch", "b1", "--queue-only").exit_code == 0

    listed = json.loads(cli("queue", "list", "--json").stdout)
    assert listed["counts"] == {"queued": 3}
    cancelled = cli("queue", "cancel", "--batch", "b1")
    assert "cancelled 3 message(s)" in cancelled.stdout
    assert cli("deliver").exit_code == 0 and srv.messages == []
    assert workspace.states() == {"cancelled": 3}

    assert "3 message(s) due now" not in cli("queue", "retry", "--batch", "b1").stdout  # cancelled stay cancelled
    assert cli("send", "--to", "x@example.org", "--subject", "S", "--body", "B").exit_code == 0
    text = cli("queue", "list").stdout
    assert "cancelled: 3" in text and "sent: 1" in text
    purge = cli("queue", "purge", "--before", "2999-01-01")
    assert "purged 1 sent message(s)" in purge.stdout
    assert len(log_json(cli)) == 1  # the log keeps its row
    bad = cli("queue", "show", "999")
    assert (
        bad.exit_code == 2
        and bad.stderr.strip() == "mailops: error: no message with id 999 in the outbox; see 'mailops queue list'"
    )
