"""Delivery runs: interruption, pacing, parallel senders, start-up imports."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures_cli import epoch, log_json, popen_mailops

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={f"{k}@example.com": PASSWORD for k in ("sales", "a", "b", "c", "d")})


def interrupted_send(srv, after: int, *args: str) -> tuple[subprocess.Popen[str], str, str]:
    """Run ``mailops send`` in its own process and press Ctrl-C once the server has ``after`` messages."""
    proc = popen_mailops("send", *args)
    for _ in range(200):  # bounded wait until sending has started
        if len(srv.messages) >= after:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc, out, err


def test_ctrl_c_stops_cleanly_prints_the_summary_and_loses_nothing(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, min_interval=0.25)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(40)])
    proc, out, err = interrupted_send(srv, 3, "--data", data, "--subject", "S", "--body", "B")

    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "sent " in out and "summary" in out  # the summary still prints
    sent = len(srv.messages)
    assert 3 <= sent < 40
    states = workspace.states()
    assert states.get("sent") == sent
    assert states.get("sending", 0) == 0  # nothing left claimed: returned to the queue
    assert sum(states.values()) == 40
    finish = cli("deliver")
    assert finish.exit_code == 0, finish.output
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == sorted(f"u{i}@example.org" for i in range(40))


def test_a_stop_gives_back_the_quota_reserved_ahead_for_the_next_message(workspace, srv, cli, monkeypatch):
    # Without pacing, a worker reserves quota for its next message while the current one is with the
    # server. A stop landing in that instant (too short to hit with a signal, so it is forced here)
    # must give the reservation back: the day's count stays equal to what the server received.
    from mailops import delivery, quota

    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=1000)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])
    real_reserve, real_stopping = quota.reserve, delivery.Deliverer.stopping
    state = {"reservations": 0, "stop": False}

    def reserve(*args, **kwargs):
        held = real_reserve(*args, **kwargs)
        state["reservations"] += 1
        state["stop"] = state["reservations"] == 2  # the one taken ahead while message 1 is recorded
        return held

    monkeypatch.setattr(quota, "reserve", reserve)
    monkeypatch.setattr(delivery.Deliverer, "stopping", lambda self: state["stop"] or real_stopping(self))

    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--json")

    assert state["reservations"] == 2
    assert len(srv.messages) == 1
    assert json.loads(result.stdout)["returned_to_queue"] == 4
    assert workspace.states() == {"sent": 1, "queued": 4}
    monkeypatch.setattr(delivery.Deliverer, "stopping", real_stopping)
    stats = json.loads(cli("stats", "--json").stdout)["senders"]
    assert stats[0]["sent_today"] == 1


def test_ctrl_c_while_outcomes_are_written_during_the_next_send_loses_nothing(workspace, srv, cli):
    # No pacing: each outcome is written while the next message is with the server, and quota is
    # reserved one message ahead. Interrupted mid-run, the pending outcome is written, the reservation
    # ahead given back: what the log, the outbox and the day's count say is what the server received.
    def slow_server(_envelope):
        time.sleep(0.05)
        return None

    srv.data_hook = slow_server
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=1000)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(60)])
    proc, out, err = interrupted_send(srv, 5, "--data", data, "--subject", "S", "--body", "B", "--json")

    assert proc.returncode == 1, err
    assert "Traceback" not in err
    sent = len(srv.messages)
    assert 5 <= sent < 60
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["sent"] == sent
    assert workspace.states() == {"sent": sent, "queued": 60 - sent}
    assert sum(1 for row in log_json(cli) if row["outcome"] == "sent") == sent
    stats = json.loads(cli("stats", "--json").stdout)["senders"]
    assert stats[0]["sent_today"] == sent


def test_an_outcome_that_cannot_be_written_returns_its_message_and_the_run_goes_on(workspace, srv, cli, monkeypatch):
    # The first outcome is written while the second message is with the server; that write fails here
    # (a fault no real database gives on demand). The first message goes back to the queue (it will be
    # sent again: at-least-once), the second one's transaction is not disturbed, the rest are sent.
    from mailops import delivery

    real_batches, calls = delivery._GroupWrites._batches, []

    def batches(conn, batch):  # the group's log rows and sent updates, as driver statements
        if batch.sent:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("disk full")
        return real_batches(conn, batch)

    monkeypatch.setattr(delivery._GroupWrites, "_batches", staticmethod(batches))
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])

    result = cli("send", "--data", data, "--subject", "S", "--body", "B", "--json")

    summary = json.loads(result.stdout)
    assert summary["sent"] == 4 and summary["returned_to_queue"] == 1
    assert any("could not record an outcome: disk full" in p for p in summary["problems"])
    assert len(srv.messages) == 5 and srv.connections == 1  # the second message's transaction went on
    assert workspace.states() == {"sent": 4, "queued": 1}


def test_a_write_that_fails_to_commit_reserves_nothing_ahead(workspace, srv, cli, monkeypatch):
    # The transaction that records message 1 also reserves quota for message 3 (message 2 is with the
    # server). If it fails to commit, message 3 must not go out on a reservation that was rolled back:
    # the day's count must still cover every message the server received.
    import contextlib

    from mailops import delivery, quota, store

    real_write_on, real_reserve, real_take = store.Store.write_on, quota.reserve, quota.take_on_cursor
    real_batches = delivery._GroupWrites._batches
    state = {"reserved": False, "logged": False, "failed": False}

    def reserve(*args, **kwargs):
        state["reserved"] = True
        return real_reserve(*args, **kwargs)

    def take_on_cursor(*args, **kwargs):  # the group's reservations on the SQLite cursor
        taken = real_take(*args, **kwargs)
        state["reserved"] = state["reserved"] or taken is not None
        return taken

    def batches(conn, batch):  # the group's log rows and sent updates
        state["logged"] = state["logged"] or bool(batch.attempts)
        return real_batches(conn, batch)

    @contextlib.contextmanager
    def write_on(self, connection):  # the workers' group transactions
        state["reserved"] = state["logged"] = False
        with real_write_on(self, connection) as conn:
            yield conn
            if state["reserved"] and state["logged"] and not state["failed"]:
                state["failed"] = True
                raise RuntimeError("commit failed")  # rolls the whole transaction back

    monkeypatch.setattr(quota, "reserve", reserve)
    monkeypatch.setattr(quota, "take_on_cursor", take_on_cursor)
    monkeypatch.setattr(delivery._GroupWrites, "_batches", staticmethod(batches))
    monkeypatch.setattr(store.Store, "write_on", write_on)
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=1000)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(5)])

    summary = json.loads(cli("send", "--data", data, "--subject", "S", "--body", "B", "--json").stdout)

    assert state["failed"]
    assert summary["sent"] == 4 and summary["returned_to_queue"] == 1  # message 1: sent, not recorded
    assert len(srv.messages) == 5
    stats = json.loads(cli("stats", "--json").stdout)["senders"]  # reads only: the patched writes play no part
    assert stats[0]["sent_today"] == 5  # every message the server received was reserved


def test_min_interval_paces_sends_without_deferring(workspace, srv, cli):
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, min_interval=0.3)},
        routes={"default": "sales"},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(4)])
    start = time.monotonic()
    result = cli("send", "--data", data, "--subject", "S", "--body", "B")
    elapsed = time.monotonic() - start
    assert result.exit_code == 0, result.output
    assert len(srv.messages) == 4
    assert elapsed >= 0.9  # three waits of 0.3 s between four sends: paced, not bunched (a lower bound only)
    times = sorted(epoch(r["at"]) for r in log_json(cli))
    # A log row's time is taken when its attempt ends, while the interval counts from one reservation to
    # the next: the first attempt also opened the connection (TLS, login), so its gap to the second is
    # shorter by that time, which grows under load. From the second on, every send uses the open connection.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.2 for gap in gaps[1:]), gaps  # spaced by the interval, less send-time jitter


def test_senders_work_in_parallel_each_over_one_reused_connection(workspace, srv, cli):
    workspace.write_config(
        {k: workspace.sender(srv, email=f"{k}@example.com", password=PASSWORD) for k in ("a", "b", "c", "d")},
        routes={"pool": {"senders": ["a", "b", "c", "d"], "strategy": "round-robin"}},
    )
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(40)])

    result = cli("send", "--route", "pool", "--data", data, "--subject", "S", "--body", "B", "--json")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {k: v["sent"] for k, v in summary["per_sender"].items()} == {"a": 10, "b": 10, "c": 10, "d": 10}
    assert srv.connections == 4 and srv.logins == 4  # one session per sender, reused for its 10 messages


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["password", "status"]])
def test_fast_commands_do_not_import_the_database_templating_or_smtp_stack(workspace, srv, args):
    workspace.write_config({"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)})
    heavy = ["sqlalchemy", "sqlmodel", "jinja2", "smtplib", "aiosmtpd", "mailops.store", "mailops.transport"]
    code = (
        "import sys\n"
        "from mailops.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print('LOADED=' + ','.join(m for m in {heavy!r} if m in sys.modules), 'EXIT=' + str(code), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "EXIT=0" in proc.stderr, proc.stderr
    assert "LOADED= " in proc.stderr, proc.stderr


def test_the_send_and_deliver_modules_import_no_orm():
    # they use the Core tables of mailops.tables: SQLModel and sqlalchemy.orm cost ~140 ms per start
    modules = ["cli", "sending", "delivery", "outbox", "quota", "routing", "health", "history"]
    code = (
        "import sys\n"
        f"import {', '.join('mailops.' + m for m in modules)}\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sqlmodel', 'sqlalchemy.orm'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "[]\n"), proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["send", "--help"], ["queue", "list", "--json"]])
def test_the_executable_leaves_without_teardown_but_with_all_its_output(workspace, srv, args):
    # `mailops` ends with os._exit (no interpreter teardown). With output to a pipe and no
    # PYTHONUNBUFFERED, what was written must still arrive whole, as from a normal exit.
    workspace.write_config({"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    via_exit = subprocess.run(
        [sys.executable, "-m", "mailops", *args], capture_output=True, text=True, env=env, timeout=60
    )
    normal = subprocess.run(
        [sys.executable, "-c", f"from mailops.cli import main; main({args!r})"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert via_exit.returncode == normal.returncode == 0, via_exit.stderr
    assert via_exit.stdout == normal.stdout and via_exit.stdout.strip()


def test_the_executable_keeps_the_exit_code_of_an_error(workspace):
    # (and its one-line message: stderr is flushed before os._exit)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run(
        [sys.executable, "-m", "mailops", "--config", str(workspace.root / "missing.yaml"), "stats"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("mailops: error: ") and "missing.yaml" in proc.stderr
