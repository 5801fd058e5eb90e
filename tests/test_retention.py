"""Retention: bodies of sent and failed messages dropped after ``retention:``, the log kept, space given back."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import sqlite3
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailops import migrations
from mailops.config import DeliveryPolicy
from mailops.outbox import RETENTION_BATCH, Outbox
from mailops.store import Store
from tests.fixtures_cli import run_mailops

PASSWORD = "s3cret-pass"
DAY = 86400.0


@pytest.fixture
def shared(workspace, database_url):
    workspace.use_database(database_url)
    return workspace


def _setup(workspace, smtp_server, sender_keys=None, **top):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD, **(sender_keys or {}))},
        routes={"default": "sales"},
        **top,
    )
    brochure = workspace.root / "brochure.pdf"
    brochure.write_bytes(b"%PDF-1.4\n" + os.urandom(200_000))
    return srv, brochure


def _age(workspace, days: float, where: str) -> None:
    """Make messages look last changed ``days`` ago."""
    store = Store.open(workspace.database_url or f"sqlite:///{workspace.db_path}")
    try:
        with store.write() as conn:
            conn.exec_driver_sql(f"UPDATE messages SET updated_at = {time.time() - days * DAY} WHERE {where}")
    finally:
        store.close()


def test_send_drops_expired_bodies_and_keeps_rows_log_and_what_is_still_referenced(shared, smtp_server, cli):
    srv, brochure = _setup(shared, smtp_server, retention="7d")
    data = shared.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(3)])
    sent = cli("send", "--data", data, "--subject", "S {{ n }}", "--body", "B", "--attach", brochure)
    assert sent.exit_code == 0, sent.output
    assert len(srv.messages) == 3
    _age(shared, 8, "id IN (SELECT id FROM messages ORDER BY id LIMIT 2)")
    kept_ids = shared.query("SELECT message_id FROM messages ORDER BY id")

    again = cli("send", "--to", "late@example.org", "--subject", "Late", "--body", "B", "--attach", brochure)
    assert again.exit_code == 0, again.output

    rows = shared.query("SELECT recipients, state, LENGTH(mime), parts IS NULL FROM messages ORDER BY id")
    assert [(r[0], r[1], r[2] == 0, bool(r[3])) for r in rows] == [
        ('["u0@example.org"]', "sent", True, True),
        ('["u1@example.org"]', "sent", True, True),
        ('["u2@example.org"]', "sent", False, False),
        ('["late@example.org"]', "sent", False, False),
    ]
    assert shared.query("SELECT message_id FROM messages ORDER BY id")[:3] == kept_ids
    assert shared.query("SELECT COUNT(*) FROM attempts WHERE outcome = 'sent'") == [(4,)]
    # the brochure is still referenced by the two recent messages
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(1,)]
    assert shared.query("SELECT refs FROM attachments") == [(2,)]
    log = cli("log", "--json")
    assert log.exit_code == 0 and log.stdout.count('"outcome": "sent"') == 4

    # a message without its body is not sent again
    retried = cli("queue", "retry", "--all")
    assert retried.exit_code == 0, retried.output
    assert shared.states() == {"sent": 4}

    _age(shared, 8, "1 = 1")
    store = Store.open(shared.database_url or f"sqlite:///{shared.db_path}")
    try:
        assert Outbox(store, DeliveryPolicy()).expire_bodies(time.time() - 7 * DAY) == 2
    finally:
        store.close()
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(0,)]
    assert shared.query("SELECT COUNT(*) FROM messages WHERE LENGTH(mime) > 0") == [(0,)]
    assert shared.query("SELECT COUNT(*) FROM messages") == [(4,)]
    assert len(srv.messages) == 4


def test_queued_and_deferred_bodies_are_never_dropped(shared, smtp_server, cli):
    _srv, brochure = _setup(shared, smtp_server, retention="1d")
    queued = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", brochure, "--queue-only")
    assert queued.exit_code == 0, queued.output
    _age(shared, 30, "1 = 1")
    store = Store.open(shared.database_url or f"sqlite:///{shared.db_path}")
    try:
        assert Outbox(store, DeliveryPolicy()).expire_bodies(time.time()) == 0
    finally:
        store.close()
    assert shared.query("SELECT state, LENGTH(mime) > 0 FROM messages") == [("queued", True)]
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(1,)]


def test_bodies_go_in_small_batches_and_a_run_does_a_bounded_amount(shared, smtp_server, cli):
    _setup(shared, smtp_server)
    store = Store.open(shared.database_url or f"sqlite:///{shared.db_path}")
    try:
        old = time.time() - 60 * DAY
        with store.write() as conn:
            for i in range(RETENTION_BATCH * 10 + 5):
                conn.exec_driver_sql(
                    "INSERT INTO messages (created_at, updated_at, run_id, strategy, candidates, nominal_sender, "
                    "envelope_from, recipients, to_header, subject, message_id, mime, state, due_at, attempts) "
                    f"VALUES ({old}, {old + i}, 'r', 'failover', '[]', 'sales', 's@example.com', '[]', '', 'S', "
                    f"'<{i}@x>', X'41', 'sent', 0, 1)"
                    if conn.dialect.name == "sqlite"
                    else "INSERT INTO messages (created_at, updated_at, run_id, strategy, candidates, nominal_sender, "
                    "envelope_from, recipients, to_header, subject, message_id, mime, state, due_at, attempts) "
                    f"VALUES ({old}, {old + i}, 'r', 'failover', '[]', 'sales', 's@example.com', '[]', '', 'S', "
                    f"'<{i}@x>', '\\x41'::bytea, 'sent', 0, 1)"
                )
        outbox = Outbox(store, DeliveryPolicy())
        assert outbox.expire_bodies(time.time()) == RETENTION_BATCH * 10  # one call: ten batches at most
        assert outbox.expire_bodies(time.time()) == 5  # the next run goes on
        assert outbox.expire_bodies(time.time()) == 0
    finally:
        store.close()


def test_sqlite_gives_the_space_of_dropped_bodies_back(workspace, smtp_server, cli):
    # 4 MB through TLS to a Python server: on a loaded machine its final reply can take longer than the usual 5 s
    srv, _ = _setup(workspace, smtp_server, sender_keys={"timeout": 60})
    big = workspace.root / "big.pdf"
    big.write_bytes(os.urandom(3_000_000))
    sent = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", big)
    assert sent.exit_code == 0 and len(srv.messages) == 1, sent.output

    def pages() -> int:
        with sqlite3.connect(workspace.db_path) as conn:
            return int(conn.execute("PRAGMA page_count").fetchone()[0])

    before = pages()
    _age(workspace, 40, "1 = 1")
    store = Store.open(f"sqlite:///{workspace.db_path}")
    try:
        assert Outbox(store, DeliveryPolicy()).expire_bodies(time.time() - 30 * DAY) == 1
    finally:
        store.close()
    with sqlite3.connect(workspace.db_path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)
    assert before - pages() > 3_000_000 * 4 / 3 // 4096 * 0.9  # the encoded attachment's pages are gone


def test_an_sqlite_database_made_before_the_migration_is_switched_to_incremental_vacuum(tmp_path: Path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file in the old mode (none), as every mailops made it
        conn.execute("CREATE TABLE placeholder (x)")
        conn.execute("DROP TABLE placeholder")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    store = Store.open(f"sqlite:///{path}")
    try:
        assert store.schema_version() == migrations.MIGRATIONS[-1][0]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)


def test_the_delivered_message_of_a_kept_body_is_still_readable(shared, smtp_server, cli):
    srv, brochure = _setup(shared, smtp_server)
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", brochure).exit_code == 0
    [(msg_id,)] = shared.query("SELECT id FROM messages")
    store = Store.open(shared.database_url or f"sqlite:///{shared.db_path}")
    try:
        found = Outbox(store, DeliveryPolicy()).get(msg_id)
    finally:
        store.close()
    assert found is not None
    parsed = email.message_from_bytes(bytes(found[0]["mime"]), policy=email.policy.default)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content() == brochure.read_bytes()
    assert len(srv.messages) == 1


def test_db_status_shows_what_messages_attachments_and_the_log_take(shared, smtp_server, cli):
    from tests.fixtures_cli import run_mailops

    srv, brochure = _setup(shared, smtp_server)
    sent = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", brochure)
    assert sent.exit_code == 0 and len(srv.messages) == 1, sent.output

    status = run_mailops("db", "status", "--json")
    assert status.exit_code == 0, status.output
    data = json.loads(status.stdout)
    assert data["rows"]["attachments"] == 1
    sizes = data["bytes"]
    assert set(sizes) == {"messages", "attachments", "log"}
    assert sizes["attachments"] >= 200_000 * 4 // 3  # the encoded brochure, stored once
    assert 0 < sizes["messages"] < 200_000 and sizes["log"] > 0

    text = run_mailops("db", "status")
    assert text.exit_code == 0, text.output
    [line] = [line for line in text.stdout.splitlines() if line.startswith("size: ")]
    assert re.fullmatch(r"size: messages \d+ kB, attachments [23]\d\d kB, log \d+ kB", line), line


def test_deliver_drops_expired_bodies_as_it_runs(shared, smtp_server, cli):
    srv, brochure = _setup(shared, smtp_server)
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B", "--attach", brochure).exit_code == 0
    queued = cli("send", "--to", "b@example.org", "--subject", "S", "--body", "B", "--queue-only")
    assert queued.exit_code == 0, queued.output
    _age(shared, 31, "state = 'sent'")

    delivered = cli("deliver")
    assert delivered.exit_code == 0, delivered.output
    rows = shared.query("SELECT recipients, state, LENGTH(mime) > 0 FROM messages ORDER BY id")
    assert [(r[0], r[1], bool(r[2])) for r in rows] == [
        ('["a@example.org"]', "sent", False),  # 31 days old: past the default 30d
        ('["b@example.org"]', "sent", True),
    ]
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(0,)]
    assert len(srv.messages) == 2


def test_retention_reads_the_kept_bodies_index_not_every_sent_message(tmp_path: Path):
    from mailops.outbox import _EXPIRED

    store = Store.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with store.read() as conn:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(_EXPIRED[True]).replace(":before", "0")).all()
    finally:
        store.close()
    assert [row[-1] for row in plan] == ["SEARCH messages USING INDEX ix_messages_kept_bodies (updated_at<?)"]


def test_queue_show_says_when_retention_removed_the_body_and_which_setting_keeps_it(shared, smtp_server, cli):
    _srv, brochure = _setup(shared, smtp_server, retention="7d", timezone="Europe/Berlin")
    for to in ("old@example.org", "new@example.org", "older@example.org"):
        sent = cli("send", "--to", to, "--subject", "S", "--body", "B", "--attach", brochure)
        assert sent.exit_code == 0, sent.output
    [(old,), (new,), (older,)] = shared.query("SELECT id FROM messages ORDER BY id")
    _age(shared, 8, f"id IN ({old}, {older})")
    before = time.time()
    delivered = run_mailops("deliver")  # nothing to send; retention drops the two bodies older than 7d
    after = time.time()
    assert delivered.exit_code == 0, delivered.output
    assert shared.query("SELECT id FROM messages WHERE LENGTH(mime) = 0 ORDER BY id") == [(old,), (older,)]
    store = Store.open(shared.database_url or f"sqlite:///{shared.db_path}")
    try:  # as an older mailops left it: the body dropped, no time recorded
        with store.write() as conn:
            conn.exec_driver_sql(f"UPDATE messages SET body_removed_at = NULL WHERE id = {older}")
    finally:
        store.close()

    shown = run_mailops("queue", "show", str(old))
    assert shown.exit_code == 0, shown.output
    [line] = [line for line in shown.stdout.splitlines() if "retention" in line]
    match = re.fullmatch(
        r"  body: removed by retention at (\S+ \S+) (CET|CEST); sent and failed messages keep theirs for 7d "
        r"\('retention:' in senders.yaml\)",
        line,
    )
    assert match, line
    local = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZoneInfo("Europe/Berlin"))
    assert int(before) <= local.timestamp() <= after
    assert "From:" not in shown.stdout and "attempt " in shown.stdout  # no headers left; the log stays

    as_json = json.loads(run_mailops("queue", "show", str(old), "--json").stdout)
    assert as_json["body"] == "removed by retention" and as_json["headers"] == {}
    removed_at = datetime.fromisoformat(as_json["message"]["body_removed_at"])
    assert removed_at.utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert before - 0.001 <= removed_at.timestamp() <= after + 0.001

    unrecorded = run_mailops("queue", "show", str(older))
    assert (
        "  body: removed by retention (by an older mailops, which did not record when); sent and failed messages "
        "keep theirs for 7d ('retention:' in senders.yaml)"
    ) in unrecorded.stdout.splitlines()
    assert json.loads(run_mailops("queue", "show", str(older), "--json").stdout)["message"]["body_removed_at"] is None

    kept = run_mailops("queue", "show", str(new))
    assert "retention" not in kept.stdout and "From: sales@example.com" in kept.stdout
    kept_json = json.loads(run_mailops("queue", "show", str(new), "--json").stdout)
    assert kept_json["body"] == "kept" and kept_json["message"]["body_removed_at"] is None
