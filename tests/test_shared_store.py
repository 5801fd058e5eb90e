"""The shared store: the same outbox, quota and migration guarantees on SQLite and on a real PostgreSQL server.

Most tests here run twice (``database_url`` is parametrized over both
backends). PostgreSQL runs in a throw-away cluster started by
``tests/fixtures_pg.py`` on 127.0.0.1; several ``mailops`` processes pointed at
one database stand in for several hosts sharing it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from mailops import counters, health, history, migrations, quota, tables
from mailops.config import DeliveryPolicy, parse_config
from mailops.errors import StoreError
from mailops.outbox import Outbox
from mailops.reader import Reader, open_reader
from mailops.store import Store, mask_url
from tests.fixtures_cli import epoch, popen_mailops, run_mailops
from tests.smtp_servers import closed_port
from tests.test_log_search import drop_recipient_search
from tests.test_store import ALL_TABLES

PASSWORD = "s3cret-pass"
DB_ERRORS = ("database is locked", "OperationalError", "Traceback", "database", "deadlock", "psycopg")
REPO_ROOT = Path(__file__).resolve().parent.parent
UTC = ZoneInfo("UTC")


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD})


@pytest.fixture
def shared(workspace, database_url):
    """The workspace pointed at this test's database (an SQLite file or a PostgreSQL database)."""
    workspace.use_database(database_url)
    yield workspace
    # the PostgreSQL runs really used the server: mailops never fell back to the workspace's SQLite file
    assert database_url.startswith("sqlite") or not workspace.db_path.exists()


def _rows(workspace, n: int, name: str = "c.csv"):
    return workspace.csv(name, [{"email": f"u{i}@example.org", "n": i} for i in range(n)])


def _no_db_errors(procs, outputs) -> None:
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode in (0, 1), err
        assert not any(word in err for word in DB_ERRORS), err


# ---------------------------------------------------------------- several processes, one database


@pytest.mark.slow
@pytest.mark.parametrize("connections", [1, 3])
def test_six_deliver_processes_share_one_daily_limit_exactly(shared, srv, cli, connections):
    # With three connections a process's group transactions reserve for several messages of one sender at once.
    shared.write_config(
        {
            "sales": shared.sender(
                srv, email="sales@example.com", password=PASSWORD, daily_limit=100, connections=connections
            )
        },
        routes={"default": "sales"},
    )
    queued = cli("send", "--data", _rows(shared, 300), "--subject", "S {{ n }}", "--body", "B", "--queue-only")
    assert queued.exit_code == 0, queued.output
    assert shared.states() == {"queued": 300}

    procs = [popen_mailops("deliver") for _ in range(6)]
    outputs = [p.communicate(timeout=300) for p in procs]

    _no_db_errors(procs, outputs)
    assert len(srv.messages) == 100
    assert len({m.rcpt_tos[0] for m in srv.messages}) == 100  # no message twice
    assert shared.states() == {"sent": 100, "deferred": 200}
    [(used,)] = shared.query("SELECT count FROM usage WHERE sender = ? AND period LIKE 'day:%'", "sales")
    assert used == 100
    [(logged,)] = shared.query("SELECT COUNT(*) FROM attempts WHERE outcome = 'sent'")
    assert logged == 100


@pytest.mark.slow
def test_six_deliver_processes_never_overspend_a_recipient_counted_limit(shared, srv, cli):
    """Each message goes to 3 recipients; 20 recipients a day fit 6 messages (18), never a 7th (21)."""
    shared.write_config(
        {
            "sales": shared.sender(
                srv, email="sales@example.com", password=PASSWORD, daily_limit=20, limit_unit="recipients"
            )
        },
        routes={"default": "sales"},
    )
    queued = cli(
        "send", "--data", _rows(shared, 40), "--cc", "cc1@example.org", "--cc", "cc2@example.org",
        "--subject", "S {{ n }}", "--body", "B", "--queue-only",
    )  # fmt: skip
    assert queued.exit_code == 0, queued.output
    assert shared.states() == {"queued": 40}

    procs = [popen_mailops("deliver") for _ in range(6)]
    outputs = [p.communicate(timeout=300) for p in procs]

    _no_db_errors(procs, outputs)
    assert len(srv.messages) == 6
    assert all(len(m.rcpt_tos) == 3 for m in srv.messages)
    assert len({m.rcpt_tos[0] for m in srv.messages}) == 6  # no message twice
    assert shared.states() == {"sent": 6, "deferred": 34}
    [(used,)] = shared.query("SELECT count FROM usage WHERE sender = ? AND period LIKE 'day:%'", "sales")
    assert used == 18
    [stats] = json.loads(cli("stats", "--json").stdout)["senders"]
    assert (stats["sent_today"], stats["daily_limit"], stats["limit_unit"]) == (18, 20, "recipients")
    assert "18/20 (90%) recipients" in cli("stats").stdout


def test_recipient_counted_reservations_are_atomic_and_given_back(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    sales = _config(tmp_path, daily_limit=30, limit_unit="recipients").senders["sales"]
    now = time.time()
    with store.write() as conn:
        held = quota.reserve(conn, sales, UTC, now, 25)
        assert isinstance(held, quota.Reservation)
        blocked = quota.reserve(conn, sales, UTC, now, 6)
        assert isinstance(quota.reserve(conn, sales, UTC, now, 5), quota.Reservation)
    assert blocked.reason == "daily limit of 30 recipients has no room for 6 more for sales"
    with store.write() as conn:
        quota.release(conn, held)
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], UTC, now)["sales"] == {"day": 5, "month": 5}
    store.close()


def test_a_message_to_more_recipients_than_the_whole_limit_is_refused_before_queueing(shared, srv, cli):
    shared.write_config(
        {
            "sales": shared.sender(
                srv, email="sales@example.com", password=PASSWORD, daily_limit=20, limit_unit="recipients"
            )
        },
        routes={"default": "sales"},
    )
    to = [arg for i in range(21) for arg in ("--to", f"r{i}@example.org")]

    result = cli("send", *to, "--subject", "s", "--body", "b")

    assert result.exit_code == 2
    assert result.stderr == (
        "mailops: error: message: 21 recipients, more than sender sales's whole daily_limit of 20 recipients "
        "(daily_limit, limit_unit: recipients); split the recipients over several messages (nothing was sent)\n"
    )
    assert srv.messages == []
    assert shared.query("SELECT COUNT(*) FROM messages") == [(0,)]


@pytest.mark.slow
def test_a_sigkilled_worker_keeps_its_claims_until_the_lease_expires_then_another_sends_them(
    shared, srv, cli, lease_floor
):
    lease = 3.0
    lease_floor(lease)  # the killed worker's claims expire within the test
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        delivery={"lease": f"{lease:g}s"},
    )
    assert (
        cli("send", "--data", _rows(shared, 20), "--subject", "S {{ n }}", "--body", "B", "--queue-only").exit_code == 0
    )
    in_data, release = threading.Event(), threading.Event()
    in_flight: list[str] = []

    def hold_the_first(envelope):
        # The first message's DATA has fully arrived; the worker is killed before it reads the reply.
        if not in_data.is_set():
            in_flight.append(envelope.rcpt_tos[0])
            in_data.set()
            release.wait(15)  # bounded; blocks only this test's server
        # returning None: accept the message

    srv.data_hook = hold_the_first
    victim = popen_mailops("deliver")
    try:
        reached = in_data.wait(60)
    finally:
        victim.kill()
        _out, err = victim.communicate(timeout=30)
        release.set()  # the server now accepts the killed worker's message: sent, but nobody recorded it
    assert reached, err

    held = dict(shared.query("SELECT id, lease_until FROM messages WHERE state = 'sending'"))
    assert held and "sent" not in shared.states()
    # Another host's cron run while the leases are valid leaves the dead worker's messages alone.
    other = run_mailops("deliver", timeout=60)
    assert other.exit_code == 0, other.output
    if time.time() < min(held.values()):  # finished within the lease (it takes well under a second)
        still = dict(shared.query("SELECT id, state FROM messages WHERE state = 'sending'"))
        assert set(still) == set(held)
        assert len(srv.messages) == 1 + (20 - len(held))  # the in-flight one, and only what was never claimed

    time.sleep(max(0.0, max(held.values()) - time.time()) + 0.2)  # the leases expire
    final = run_mailops("deliver", timeout=60)
    assert final.exit_code == 0, final.output
    assert not any(word in final.stderr for word in DB_ERRORS), final.stderr

    received = Counter(m.rcpt_tos[0] for m in srv.messages)
    assert set(received) == {f"u{i}@example.org" for i in range(20)}  # nothing lost
    assert {r: n for r, n in received.items() if n > 1} == {in_flight[0]: 2}  # only the killed one, once more
    assert len({(m.rcpt_tos[0], m.message["Message-ID"]) for m in srv.messages}) == 20  # same Message-ID again
    assert shared.states() == {"sent": 20}


def test_the_quota_is_shared_and_reset_counts_from_another_process_releases_the_deferred(shared, srv, cli):
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=20)},
        routes={"default": "sales"},
    )

    first = cli("send", "--data", _rows(shared, 50), "--subject", "Hi {{ n }}", "--body", "Body {{ n }}")
    assert first.exit_code == 1, first.output
    assert len(srv.messages) == 20
    assert "daily limit of 20 reached for sales" in first.stdout

    elsewhere = run_mailops("deliver")  # another host: it sees the same counter, so it sends nothing
    assert elsewhere.exit_code == 0, elsewhere.output
    assert len(srv.messages) == 20

    reset = run_mailops("reset-counts", "sales")
    assert reset.exit_code == 0, reset.output
    lines = reset.stdout.splitlines()
    assert lines[0].startswith("reset sales day ") and lines[0].endswith(": 20 -> 0")
    assert lines[1] == "30 message(s) deferred for quota are due again; 'mailops deliver' sends them"

    later = cli("deliver")
    assert later.exit_code == 1
    assert len(srv.messages) == 40
    assert shared.states() == {"sent": 40, "deferred": 10}
    assert sorted(m.message["Subject"] for m in srv.messages) == sorted(f"Hi {i}" for i in range(40))
    [(kind, detail)] = shared.query("SELECT kind, detail FROM events")
    assert kind == "reset-counts" and "sales day:" in detail and "was 20" in detail


PROMOTE_HOLD = 0.8  # seconds the first promotion keeps its transaction open after queueing


def test_two_hosts_queueing_the_same_batch_at_once_queue_it_once(database_url: str) -> None:
    """``--batch`` dedup holds across hosts: the second promotion waits and then skips the rows."""
    first, second = Store.open(database_url), Store.open(database_url)
    policy = DeliveryPolicy()
    queued_by_first = threading.Event()

    @event.listens_for(first.engine, "after_cursor_execute")
    def _hold(conn, cursor, statement, params, context, executemany):
        # provoke the worst interleaving: the other host promotes while this transaction is still open
        if statement.startswith("UPDATE messages") and "messages.run_id" in statement:  # staged -> queued
            queued_by_first.set()
            time.sleep(PROMOTE_HOLD)

    now = time.time()
    for store, run in ((first, "run-a"), (second, "run-b")):
        Outbox(store, policy).stage(_message(run, batch="nov", key=f"row{i}", now=now) for i in range(3))

    results: dict[str, tuple[int, int]] = {}
    one = threading.Thread(target=lambda: results.__setitem__("a", Outbox(first, policy).promote("run-a", now)))
    one.start()
    assert queued_by_first.wait(10)
    results["b"] = Outbox(second, policy).promote("run-b", now)
    one.join(10)

    assert results == {"a": (3, 0), "b": (0, 3)}
    assert Outbox(second, policy).counts() == {"queued": 3}
    first.close()
    second.close()


# ---------------------------------------------------------------- every store operation, on both backends


def _message(
    run_id: str, *, now: float, batch: str | None = None, key: str | None = None, to: str = "a@example.org"
) -> dict:
    return {
        "created_at": now,
        "updated_at": now,
        "run_id": run_id,
        "batch": batch,
        "dedup_key": key,
        "route": "default",
        "strategy": "failover",
        "candidates": json.dumps(["sales"]),
        "nominal_sender": "sales",
        "sender": None,
        "envelope_from": "sales@example.com",
        "recipients": json.dumps([to]),
        "to_header": to,
        "subject": "Grüße ✓",
        "template": None,
        "message_id": f"<{run_id}.{key}@example.com>",
        "mime": b"Subject: x\r\n\r\n\x00\xff binary-safe\r\n",
        "row": 1,
        "state": "staged",
        "due_at": now,
    }


def _config(tmp_path: Path, **sender: object):
    return parse_config(
        {"timezone": "UTC", "senders": {"sales": {"email": "sales@example.com", "host": "127.0.0.1", **sender}}},
        tmp_path / "senders.yaml",
    )


def test_outbox_operations_round_trip(database_url: str) -> None:
    store = Store.open(database_url)
    outbox = Outbox(store, DeliveryPolicy(lease=60))
    now = time.time()
    assert outbox.stage(_message("r1", batch="b", key=f"k{i}", now=now, to=f"u{i}@example.org") for i in range(3)) == 3
    assert outbox.promote("r1", now) == (3, 0)
    outbox.stage(_message("r2", batch="b", key=f"k{i}", now=now) for i in range(2))
    assert outbox.promote("r2", now) == (0, 2)  # already queued in the batch
    outbox.stage([_message("r3", now=now - 10 * 86400)])
    assert outbox.discard_abandoned(now - 86400) == 1

    first = outbox.claim("w1", now, 2)
    second = outbox.claim("w2", now, 10)
    assert [m.id for m in first] == [1, 2] and [m.id for m in second] == [3]
    assert outbox.claim("w3", now, 10) == []
    assert first[0].mime == b"Subject: x\r\n\r\n\x00\xff binary-safe\r\n" and first[0].candidates == ["sales"]
    assert first[0].subject == "Grüße ✓" and first[0].recipients == ["u0@example.org"]

    outbox.renew("w1", [1, 2, 3], now + 30)  # 3 belongs to w2: untouched
    leases = {m["id"]: m["lease_until"] for m in outbox.list(state="sending")}
    assert leases == {1: pytest.approx(now + 90), 2: pytest.approx(now + 90), 3: pytest.approx(now + 60)}
    assert outbox.claim("w3", now + 70, 10)[0].id == 3  # w2's lease expired: taken over
    assert outbox.unclaim("w3", [3], now) == 1

    with store.write() as conn:
        Outbox.mark_sent(conn, first[0], "sales", now, {"u0@example.org": "sent"})
        Outbox.log(
            conn,
            {
                "at": now,
                "message_pk": 1,
                "sender": "sales",
                "recipients": "u0@example.org",
                "outcome": "sent",
                "smtp_code": 250,
                "duration": 0.25,
            },
        )
        Outbox.mark_deferred(
            conn, first[1], now + 3600, "quota: daily limit of 1 reached for sales", now, attempted=False
        )
        Outbox.log(conn, {"at": now, "message_pk": 2, "recipients": "u1@example.org", "outcome": "deferred"})
    assert outbox.counts() == {"sent": 1, "deferred": 1, "queued": 1}
    message, attempts = outbox.get(1)
    assert (
        message["state"] == "sent" and message["attempts"] == 1 and bytes(message["mime"]).endswith(b"binary-safe\r\n")
    )
    assert [a["smtp_code"] for a in attempts] == [250]
    assert outbox.backlog(now) == {
        "due_now": 1,
        "deferred": 1,
        "next_due_at": pytest.approx(now + 3600),
        "in_flight_elsewhere": 0,
    }

    assert outbox.release_quota_deferred(["sales"], now) == 1
    assert outbox.backlog(now)["due_now"] == 2
    assert outbox.cancel(now, msg_id=3).cancelled == 1
    assert outbox.retry(now, all_=True) == 1  # the deferred one; sent and cancelled stay as they are
    assert outbox.purge(now + 1) == 1
    assert outbox.counts() == {"queued": 1, "cancelled": 1}
    assert store.row_counts() == {
        "messages": 2,
        "attachments": 0,
        "attempts": 2,
        "usage": 0,
        "sender_state": 0,
        "route_state": 0,
        "events": 0,
    }
    store.close()


def test_quota_health_and_history_round_trip(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    config = _config(tmp_path, daily_limit=2, monthly_limit=5, per_minute=10)
    sales, tz, now = config.senders["sales"], config.timezone, time.time()

    with store.write() as conn:
        held = [quota.reserve(conn, sales, tz, now) for _ in range(3)]
    assert [type(h).__name__ for h in held] == ["Reservation", "Reservation", "Blocked"]
    assert held[2].kind == "day" and held[2].reason == "daily limit of 2 reached for sales"
    with store.write() as conn:
        quota.release(conn, held[1])
        assert isinstance(quota.reserve(conn, sales, tz, now), quota.Reservation)
        assert quota.usage(conn, ["sales"], tz, now) == {"sales": {"day": 2, "month": 2}}
        cleared = quota.reset(conn, ["sales"], "all", tz, now)
    keys = quota.period_keys(now, tz)
    assert cleared == [("sales", keys["day"], 2), ("sales", keys["month"], 2)]
    [(minute,)] = [(c,) for s, p, c in _usage_rows(store) if p == keys["minute"]]
    assert minute == 0

    with store.write() as conn:
        health.record(conn, "sales", False, now, "535 5.7.8 Authentication credentials invalid", "h:587 starttls")
    with store.read() as conn:
        assert health.load(conn) == {
            "sales": health.Health(
                False,
                pytest.approx(now),
                "535 5.7.8 Authentication credentials invalid",
                "h:587 starttls",
                pytest.approx(now),
            )
        }
        assert health.load(conn)["sales"].healthy is False  # a real boolean on both backends
    with store.write() as conn:
        health.record(conn, "sales", True, now)
        Outbox.log(
            conn,
            [
                {
                    "at": now,
                    "sender": "sales",
                    "route": "default",
                    "recipients": "Ann@Example.org",
                    "outcome": "sent",
                    "duration": 0.5,
                },
                {
                    "at": now + 1,
                    "sender": "sales",
                    "route": "default",
                    "recipients": "bob@example.org",
                    "outcome": "failed",
                    "duration": 1.5,
                },
            ],
        )
    history.record_event(store, "reset-counts", "period=all", now)

    reader = open_reader(database_url)
    assert reader is not None  # the schema is current: log and stats read without SQLAlchemy, on both backends
    found = history.query_log(reader, history.LogFilter(to="ann@example.org"))
    assert [(r["recipients"], r["outcome"]) for r in found] == [("Ann@Example.org", "sent")]
    assert [r["outcome"] for r in history.query_log(reader, history.LogFilter(since=now - 1))] == ["failed", "sent"]
    [stats] = history.sender_stats(reader, config, now - 60, now)
    assert (stats["attempts"], stats["success_rate"], stats["avg_response_s"], stats["health"]) == (
        2,
        50.0,
        0.5,
        "healthy",
    )
    # the same queries inside a Store transaction (as routing and delivery run them) give the same rows and types
    with store.read() as conn:
        assert history.query_log(Reader.over(conn), history.LogFilter()) == history.query_log(
            reader, history.LogFilter()
        )
        assert history.sender_stats(Reader.over(conn), config, now - 60, now) == [stats]
    reader.close()
    assert store.row_counts()["events"] == 1
    store.close()


def _usage_rows(store: Store) -> list[tuple[str, str, int]]:
    with store.read() as conn:
        return [tuple(r) for r in conn.execute(sa.text("SELECT sender, period, count FROM usage"))]


def test_reservations_of_a_group_take_each_counter_once_and_never_overspend(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    sales = _config(tmp_path, daily_limit=10, limit_unit="recipients").senders["sales"]
    now = time.time()
    with store.write() as conn:
        group = quota.reserve_many(conn, sales, UTC, now, [3, 3, 3])
    assert all(isinstance(h, quota.Reservation) and h.amounts == (3, 3) for h in group)
    with store.write() as conn:
        # 2 more do not fit together: one by one, the first takes the last unit and the second is blocked
        first, second = quota.reserve_many(conn, sales, UTC, now, [1, 1])
    assert isinstance(first, quota.Reservation) and isinstance(second, quota.Blocked)
    assert second.reason == "daily limit of 10 recipients has no room for 1 more for sales"
    with store.write() as conn:
        quota.release(conn, group[1])
    with store.read() as conn:
        assert quota.usage(conn, ["sales"], UTC, now)["sales"] == {"day": 7, "month": 7}
    store.close()


def test_min_interval_pacing_is_atomic(database_url: str, tmp_path: Path) -> None:
    store = Store.open(database_url)
    sales = _config(tmp_path, min_interval=30).senders["sales"]
    now = time.time()
    with store.write() as conn:
        assert isinstance(quota.reserve(conn, sales, UTC, now), quota.Reservation)
        blocked = quota.reserve(conn, sales, UTC, now + 1)
    assert blocked.kind == "interval" and blocked.until == pytest.approx(now + 30)
    store.close()


# ---------------------------------------------------------------- migrations and `mailops db`


def test_a_blank_database_gets_every_migration_and_the_tables_match(database_url: str) -> None:
    store = Store.open(database_url)
    names = [name for name, _ in migrations.MIGRATIONS]
    assert store.schema_version() == names[-1] and store.pending_migrations() == []
    assert Store.open(database_url).migrate() == []  # reopening applies nothing

    inspector = sa.inspect(store.engine)
    # SQLite: and the FTS5 tables of log --to's index (tests/test_log_search.py)
    assert set(inspector.get_table_names()) - set(tables.RECIPIENT_SEARCH_SHADOW) == ALL_TABLES | {
        migrations.MIGRATIONS_TABLE
    }
    schema = tables.metadata.tables
    for name, table in schema.items():
        assert [c["name"] for c in inspector.get_columns(name)] == [c.name for c in table.columns], name
        assert inspector.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key], name
    # `mailops log` names its columns in SQL text (no SQLAlchemy): every column of the log, in table order
    assert list(history.LOG_COLUMNS) == [c.name for c in schema["attempts"].columns]
    store.close()


MIGRATE_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mailops.store import Store

    url, go = sys.argv[1], Path(sys.argv[2])
    deadline = time.monotonic() + 30
    while not go.exists():  # start together with the others
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    print(Store.open(url).schema_version())
    """
)


def test_four_processes_migrating_a_blank_database_at_once_all_succeed(database_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_SCRIPT, database_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        time.sleep(0.5)  # let them import and wait for the go file
        go.touch()
        results = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    last = migrations.MIGRATIONS[-1][0]
    for code, out, err in results:
        assert (code, out.strip()) == (0, last), err
    store = Store(database_url)
    with store.read() as conn:
        recorded = [n for (n,) in conn.execute(sa.text("SELECT name FROM schema_migrations ORDER BY name"))]
    assert recorded == [name for name, _ in migrations.MIGRATIONS]
    store.close()


def _with_password(url: str) -> str:
    """The same database with a password in the URL (the test server trusts 127.0.0.1 and ignores it)."""
    return url.replace("postgresql+psycopg://postgres@", "postgresql://postgres:hunter2@")


def test_db_status_and_upgrade_show_the_masked_url_version_and_rows(shared, srv, cli):
    url = _with_password(shared.database_url)
    shared.use_database(url)
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    names = [name for name, _ in migrations.MIGRATIONS]

    blank = run_mailops("db", "status")
    assert blank.exit_code == 0, blank.output
    assert blank.stdout.splitlines() == [
        f"database: {mask_url(url)}",
        f"schema: (blank); pending: {', '.join(names)} (run 'mailops db upgrade')",
    ]
    upgrade = run_mailops("db", "upgrade")
    assert (upgrade.exit_code, upgrade.stdout) == (0, f"applied: {', '.join(names)}\n"), upgrade.output
    assert run_mailops("db", "upgrade").stdout == "the schema is up to date\n"
    assert cli("send", "--data", _rows(shared, 2), "--subject", "S", "--body", "B", "--queue-only").exit_code == 0

    status = run_mailops("db", "status", "--json")
    assert status.exit_code == 0, status.output
    status_bytes = json.loads(status.stdout)["bytes"]
    assert json.loads(status.stdout) == {
        "url": mask_url(url),
        "schema": names[-1],
        "pending_migrations": [],
        "rows": {
            "messages": 2,
            "attachments": 0,
            "attempts": 0,
            "usage": 0,
            "sender_state": 0,
            "route_state": 0,
            "events": 0,
        },
        "bytes": status_bytes,  # what they hold: tests/test_retention.py
    }
    assert status_bytes["messages"] > 0 and set(status_bytes) == {"messages", "attachments", "log"}
    if url.startswith("postgresql"):
        assert mask_url(url).startswith("postgresql://postgres:***@127.0.0.1:")
    assert shared.states() == {"queued": 2}
    assert "hunter2" not in blank.output + upgrade.output + status.output


# ---------------------------------------------------------------- log and stats: the light read path

#: runs ``mailops ARGV[2:]`` in a fresh interpreter and reports which of the modules listed in ARGV[1] it loaded
WATCHED_IMPORTS = textwrap.dedent(
    """
    import sys
    from mailops.cli import main

    watched = sys.argv[1].split(",")
    try:
        main(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code
    print("LOADED=" + ",".join(m for m in watched if m in sys.modules), "EXIT=" + str(code), file=sys.stderr)
    """
)
#: what log and stats do without: they read through plain DB-API SQL
HEAVY = (
    "sqlalchemy",
    "sqlmodel",
    "jinja2",
    "smtplib",
    "aiosmtpd",
    "mailops.store",
    "mailops.transport",
)
#: what send and deliver do without: they run on SQLAlchemy Core (mailops.tables)
ORM = ("sqlmodel", "sqlalchemy.orm")


def _watched(watched: tuple[str, ...], *args: str) -> tuple[str, str]:
    """stdout of ``mailops ARGS`` in a fresh process, and which of ``watched`` it imported (comma-separated)."""
    command = [sys.executable, "-c", WATCHED_IMPORTS, ",".join(watched), *args]
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert proc.stderr.rstrip().endswith("EXIT=0"), proc.stderr
    return proc.stdout, proc.stderr.rstrip().rpartition("LOADED=")[2].split(" EXIT=")[0]


def _light(*args: str) -> tuple[str, str]:
    """stdout of ``mailops ARGS`` in a fresh process, and the heavy modules it imported (comma-separated)."""
    return _watched(HEAVY, *args)


def test_log_and_stats_read_without_sqlalchemy_on_both_backends(shared, srv, cli):
    shared.use_database(_with_password(shared.database_url))  # a plain postgresql:// URL with a password, too
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD, daily_limit=10)},
        routes={"default": "sales"},
    )
    data = shared.csv("c.csv", [{"email": "U1@Example.org"}, {"email": "u_2@example.org"}])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B").exit_code == 0

    out, loaded = _light("log", "--json")
    assert loaded == ""
    rows = json.loads(out)
    assert [(r["recipients"], r["outcome"], r["sender"]) for r in rows] == [
        (["u_2@example.org"], "sent", "sales"),
        (["U1@example.org"], "sent", "sales"),
    ]
    assert list(rows[0]) == [*history.LOG_COLUMNS, "note"]
    assert epoch(rows[0]["at"]) >= epoch(rows[1]["at"]) and rows[0]["smtp_code"] == 250
    # --to: a case-insensitive substring whose % and _ are literal characters
    assert [r["recipients"] for r in json.loads(_light("log", "--to", "u1@EXAMPLE", "--json")[0])] == [
        ["U1@example.org"]
    ]
    assert [r["recipients"] for r in json.loads(_light("log", "--to", "u_", "--json")[0])] == [["u_2@example.org"]]
    assert json.loads(_light("log", "--to", "%", "--json")[0]) == []
    assert json.loads(_light("log", "--sender", "sales", "--status", "failed", "--json")[0]) == []

    out, loaded = _light("stats", "--json")
    assert loaded == ""
    [stats] = json.loads(out)["senders"]
    assert {
        k: stats[k]
        for k in ("sent_today", "daily_limit", "daily_usage_pct", "sent_this_month", "attempts", "success_rate")
    } == {
        "sent_today": 2,
        "daily_limit": 10,
        "daily_usage_pct": 20.0,
        "sent_this_month": 2,
        "attempts": 2,
        "success_rate": 100.0,
    }
    assert stats["health"] == "healthy"
    for args in (["log"], ["stats"]):  # the tables: rich, still no database stack
        out, loaded = _light(*args)
        assert loaded == "" and "sales" in out, args


def test_log_and_stats_on_a_blank_or_older_database_bring_it_up_to_date_first(database_url: str, workspace) -> None:
    workspace.use_database(database_url)
    workspace.write_config({"sales": workspace.sender(None, port=2525, auth=False)})
    names = [name for name, _ in migrations.MIGRATIONS]

    out, loaded = _light("stats", "--json")  # a blank database: created by the Store, as by any command
    assert json.loads(out)["senders"][0]["attempts"] == 0 and "sqlalchemy" in loaded
    store = Store(database_url)
    assert store.pending_migrations() == []

    with store.write() as conn:  # back to a database of an older mailops: the steps after 002 not applied yet
        later = names[names.index("002_stats_index") + 1 :]
        for name in later:
            conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = :name"), {"name": name})
        assert later == [  # undone here
            "003_health_settings",
            "004_suppressions",
            "005_message_origin",
            "006_token_state",
            "007_attachments",
            "008_incremental_vacuum",
            "009_server_max_size",
            "010_include_suppressed",
            "011_recipient_search",
            "012_body_removed_at",
            "013_claim_indexes",
        ]
        for index in ("ix_messages_state_due_id", "ix_messages_run_state_due", "ix_messages_batch_state_due"):
            conn.execute(sa.text(f"DROP INDEX {index}"))
        conn.execute(sa.text("CREATE INDEX ix_messages_state_due ON messages (state, due_at)"))
        conn.execute(sa.text("CREATE INDEX ix_messages_run_state ON messages (run_id, state)"))
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN body_removed_at"))
        drop_recipient_search(conn, database_url)
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN include_suppressed"))
        conn.execute(sa.text("ALTER TABLE sender_state DROP COLUMN token_expires_at"))
        conn.execute(sa.text("ALTER TABLE sender_state DROP COLUMN token_problem"))
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN keep_date"))
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN note"))
        conn.execute(sa.text("ALTER TABLE sender_state DROP COLUMN settings"))
        conn.execute(sa.text("ALTER TABLE sender_state DROP COLUMN last_error_at"))
        conn.execute(sa.text("ALTER TABLE sender_state DROP COLUMN max_size"))
        conn.execute(sa.text("DROP TABLE suppressions"))
        conn.execute(sa.text("DROP TABLE attachments"))
        conn.execute(sa.text("DROP INDEX ix_messages_kept_bodies"))
        conn.execute(sa.text("ALTER TABLE messages DROP COLUMN parts"))
    assert open_reader(database_url) is None
    out, loaded = _light("log", "--json")
    assert json.loads(out) == [] and "sqlalchemy" in loaded
    assert store.pending_migrations() == []
    reader = open_reader(database_url)
    assert reader is not None and counters.usage(reader, [], UTC, time.time()) == {}  # IN () matches nothing
    reader.close()
    store.close()


def test_send_and_deliver_run_on_sqlalchemy_core_without_sqlmodel_or_the_orm(shared, srv):
    # importing SQLModel and sqlalchemy.orm would add about 160 ms to every start of send and deliver
    sender = shared.sender(srv, email="sales@example.com", password=PASSWORD)
    shared.write_config(
        {"a": sender, "b": sender}, routes={"default": {"senders": ["a", "b"], "strategy": "round-robin"}}
    )

    # a blank database: migrated by the send itself
    assert _watched(ORM, "send", "--data", str(_rows(shared, 2)), "--subject", "S", "--body", "B")[1] == ""
    queue_only = ("send", "--data", str(_rows(shared, 3, "q.csv")), "--subject", "S", "--body", "B", "--queue-only")
    assert _watched(ORM, *queue_only)[1] == ""
    assert _watched(ORM, "deliver")[1] == ""
    assert shared.states() == {"sent": 5} and len(srv.messages) == 5
    assert shared.query("SELECT counter FROM route_state") == [(5,)]  # the Core tables took the turns
    assert dict(shared.query("SELECT sender, COUNT(*) FROM messages GROUP BY sender")) == {"a": 3, "b": 2}


# ---------------------------------------------------------------- an unreachable server


def test_an_unreachable_database_is_one_line_exit_2_nothing_sent_nothing_lost(workspace, pg_url, srv, cli):
    workspace.use_database(pg_url)
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    assert cli("send", "--data", _rows(workspace, 3), "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    port = closed_port()
    down = f"postgresql+psycopg://mailops:hunter2@127.0.0.1:{port}/mailops"
    expected = (
        f"mailops: error: cannot connect to the database postgresql+psycopg://mailops:***@127.0.0.1:{port}/mailops: "
        "Connection refused; check that the server is running and reachable from this host and 'database:' in "
        "senders.yaml (or MAILOPS_DATABASE_URL); nothing was sent and queued messages stay in the outbox\n"
    )

    commands = (
        ["deliver"],
        ["send", "--to", "x@example.org", "--subject", "S", "--body", "B"],
        ["db", "status"],
        ["log"],
        ["stats"],
    )
    for args in commands:
        result = run_mailops(*args, env={"MAILOPS_DATABASE_URL": down}, timeout=60)
        assert (result.exit_code, result.stdout, result.stderr) == (2, "", expected), args
    assert srv.messages == [] and srv.connections == 0

    # the database is back (here: the right URL again): everything queued is still there and goes out
    assert workspace.states() == {"queued": 3}
    back = run_mailops("deliver")
    assert back.exit_code == 0, back.output
    assert sorted(m.rcpt_tos[0] for m in srv.messages) == [f"u{i}@example.org" for i in range(3)]


def test_a_database_that_does_not_exist_is_one_store_error(pg_cluster) -> None:
    url = pg_cluster.url("no_such_db")

    with pytest.raises(StoreError) as info:
        Store.open(url)

    assert info.value.exit_code == 2
    assert str(info.value) == (
        f'cannot connect to the database {url}: database "no_such_db" does not exist; '
        "create it (createdb -O USER NAME on the server) or fix 'database:' in senders.yaml (or MAILOPS_DATABASE_URL); "
        "nothing was sent and queued messages stay in the outbox"
    )


def test_a_database_user_without_rights_is_one_store_error(pg_cluster, pg_url) -> None:
    role = f"r_{secrets.token_hex(4)}"
    pg_cluster.admin(f"CREATE ROLE {role} LOGIN")  # may connect, may not create tables (PostgreSQL 15+ default)
    url = pg_url.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://{role}@")

    with pytest.raises(StoreError) as info:
        Store.open(url)

    assert str(info.value) == (
        f"database {url}: permission denied for schema public; the database user must own the database "
        "(createdb -O USER NAME, or ALTER DATABASE NAME OWNER TO USER)"
    )


def test_renewal_skips_a_row_another_transaction_holds_instead_of_waiting(pg_url: str) -> None:
    """PostgreSQL: renew() never waits on a locked row (waiting could close a lock cycle with an outcome write)."""
    store = Store.open(pg_url)
    outbox = Outbox(store, DeliveryPolicy(lease=60))
    now = time.time()
    outbox.stage(_message("r1", now=now, key=str(i)) for i in range(2))
    outbox.promote("r1", now)
    assert [m.id for m in outbox.claim("w1", now, 10)] == [1, 2]

    with store.engine.connect() as other, other.begin():
        other.execute(sa.text("SELECT id FROM messages WHERE id = 1 FOR UPDATE"))  # an outcome being written
        started = time.monotonic()
        done = threading.Thread(target=outbox.renew, args=("w1", [1, 2], now + 30))
        done.start()
        done.join(5)
        assert not done.is_alive() and time.monotonic() - started < 5
    leases = {m["id"]: m["lease_until"] for m in outbox.list(state="sending")}
    assert leases == {1: pytest.approx(now + 60), 2: pytest.approx(now + 90)}
    store.close()


def test_a_row_lock_held_too_long_by_another_process_is_one_store_error(
    pg_url: str, monkeypatch, tmp_path: Path
) -> None:
    """PostgreSQL's lock_timeout plays the part of SQLite's busy timeout: no endless wait behind a stuck host."""
    import mailops.store

    monkeypatch.setattr(mailops.store, "BUSY_TIMEOUT_SECONDS", 1.0)
    store = Store.open(pg_url)
    sales = _config(tmp_path, daily_limit=5).senders["sales"]
    with store.write() as conn:
        quota.reserve(conn, sales, UTC, time.time())
    with store.read() as conn:
        assert conn.execute(sa.text("SHOW lock_timeout")).scalar_one() == "1s"

    with store.engine.connect() as stuck, stuck.begin():
        stuck.execute(sa.text("SELECT * FROM usage FOR UPDATE"))  # a host frozen in the middle of a reservation
        started = time.monotonic()
        with pytest.raises(StoreError) as info, store.write() as conn:
            quota.reserve(conn, sales, UTC, time.time())
        assert time.monotonic() - started < 5
    assert str(info.value) == (
        f"the database {pg_url} stayed locked by another mailops process for 1 s; nothing was lost, run the command again"
    )
    with store.read() as conn:  # the failed reservation took nothing
        assert quota.usage(conn, ["sales"], UTC, time.time())["sales"]["day"] == 1
    store.close()


def test_a_missing_postgresql_driver_is_one_store_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine without the postgres extra

    with pytest.raises(StoreError) as info:
        Store("postgresql://mailops:hunter2@db.internal/mailops")

    assert str(info.value) == (
        "database URL 'postgresql://mailops:***@db.internal/mailops' needs the driver module psycopg, "
        "which is not installed; run: pip install 'mailops[postgres]' (or '.[postgres]' in the checkout)"
    )
