"""Attachments stored once by content hash: byte-identical reassembly, sharing, collection, old rows (issue 11)."""

from __future__ import annotations

import email
import email.generator
import email.policy
import hashlib
import json
import os
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailops import compose, migrations
from mailops.compose import build_message, parse_address, stamp_date
from mailops.config import DeliveryPolicy
from mailops.outbox import Outbox
from mailops.states import STAGED
from mailops.store import Store
from tests.test_store import _finish, _start_python

PASSWORD = "s3cret-pass"
DATE = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)

BOUNDARY = "===============4242424242424242424=="


def _build(**overrides: Any) -> compose.PreparedEmail:
    """``build_message`` with plain defaults: one sender, one recipient, a text part; ``overrides`` change them."""
    args: dict[str, Any] = {
        "from_addr": parse_address("sales@example.com", where="t"),
        "reply_to": None,
        "to": [parse_address("r@example.org", where="t")],
        "cc": [],
        "bcc": [],
        "subject": "S",
        "text": "T",
        "html": None,
        "attachments": [],
        "message_id": "<m@example.com>",
        "date": DATE,
        "where": "row 1",
    }
    args.update(overrides)
    return build_message(**args)


class Boundaries:
    """Boundaries in a fixed sequence (the email package draws random ones); ``reset`` starts it again."""

    def __init__(self) -> None:
        self.drawn = 0

    def reset(self) -> None:
        self.drawn = 0

    def next(self) -> str:
        self.drawn += 1
        return f"{BOUNDARY[:-2]}{self.drawn}=="


@pytest.fixture
def fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> Boundaries:
    """Both compositions draw the same boundaries, in the same order."""
    boundaries = Boundaries()
    monkeypatch.setattr(
        email.generator.Generator, "_make_boundary", classmethod(lambda cls, text=None: boundaries.next())
    )
    return boundaries


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    compose._ENCODED.clear()
    yield
    compose._ENCODED.clear()


def one_piece(prepared_headers: bytes, text: str, html: str | None, attachments: list[Path]) -> bytes:
    """The message as mailops wrote it before issue 11: the email package with every attachment in place."""
    msg = EmailMessage(policy=compose._POLICY)
    head = email.message_from_bytes(prepared_headers, policy=email.policy.default)
    for name in ("From", "Reply-To", "To", "Cc", "Subject", "Date", "Message-ID", "List-Id"):
        for raw in _raw_headers(prepared_headers, name):
            msg[name] = compose._Folded(raw)
    assert head["From"]
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for path in attachments:
        maintype, subtype = compose._mime_type(path)
        msg.add_attachment(path.read_bytes(), maintype=maintype, subtype=subtype, filename=path.name)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg.as_bytes(policy=compose._SMTP)


def _raw_headers(mime: bytes, name: str) -> list[str]:
    """The folded values of header ``name`` as written ("\\n " between lines), in order."""
    head = mime.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: list[str] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and fields:
            fields[-1] += "\n" + line
        else:
            fields.append(line)
    prefix = name + ": "
    return [f[len(prefix) :] for f in fields if f.startswith(prefix)]


def _files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "brochure.pdf": b"%PDF-1.4\n" + os.urandom(200_000),
        "Prüfbericht Ä 2026.pdf": b"%PDF-1.4\n" + os.urandom(5_000),
        "报告.txt": "第一行\n第二行\n".encode(),
        "empty.bin": b"",
        "notes.txt": b"-- a line that starts like a boundary\r\n.\r\n. dot\n",
    }
    out = {}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        out[name] = path
    return out


CASES = {
    "text and one attachment": ("Hello,\nsee the brochure.\n", None, ["brochure.pdf"]),
    "text, HTML and attachments": (
        "Grüße\n",
        "<p>Grüße <b>Jürgen</b></p>",
        ["brochure.pdf", "Prüfbericht Ä 2026.pdf", "notes.txt"],
    ),
    "non-ASCII names, same file twice, an empty file": (
        "x" * 200 + "\n",
        None,
        ["报告.txt", "brochure.pdf", "empty.bin", "brochure.pdf"],
    ),
    "HTML only": ("", "<p>only html</p>", ["Prüfbericht Ä 2026.pdf"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_stored_message_is_the_one_piece_message_byte_for_byte(tmp_path, fixed_boundary, case):
    text, html, names = CASES[case]
    files = _files(tmp_path)
    paths = [files[name] for name in names]
    prepared = _build(
        from_addr=parse_address("Vertrieb Müller <sales@example.com>", where="t"),
        to=[parse_address("Jürgen Groß <jg@example.org>", where="t")],
        subject="Ihre Unterlagen – Verlängerung",
        text=text,
        html=html,
        attachments=paths,
        message_id="<fixed.1@example.com>",
    )
    fixed_boundary.reset()
    expected = one_piece(prepared.mime, text, html, paths)
    assert prepared.mime == expected
    assert prepared.size == len(expected)
    # the skeleton leaves out the attachment bodies, each stored once, under the sha256 of what is sent
    distinct = {part.digest: part for _, part in prepared.stored}
    assert len(distinct) == len(set(names))
    assert len(prepared.skeleton) == len(expected) - sum(len(p.data) for _, p in prepared.stored)
    for part in distinct.values():
        assert hashlib.sha256(part.data).hexdigest() == part.digest
    parsed = email.message_from_bytes(prepared.mime, policy=email.policy.default)
    got = [(a.get_filename(), a.get_payload(decode=True)) for a in parsed.iter_attachments()]
    assert got == [(p.name, p.read_bytes()) for p in paths]


def test_a_changed_file_is_encoded_again(tmp_path):
    path = tmp_path / "a.pdf"
    path.write_bytes(b"first")

    def digest() -> str:
        prepared = _build(
            from_addr=parse_address("s@example.com", where="t"),
            attachments=[path],
        )
        return prepared.stored[0][1].digest

    first = digest()
    assert digest() == first
    path.write_bytes(b"second, longer")
    assert digest() != first


# ---------------------------------------------------------------- through the outbox, both backends


@pytest.fixture
def shared(workspace, database_url):
    workspace.use_database(database_url)
    return workspace


def _brochure(workspace, size: int = 300_000) -> Path:
    path = workspace.root / "brochure.pdf"
    path.write_bytes(b"%PDF-1.4\n" + os.urandom(size))
    return path


def _without_date(data: bytes) -> bytes:
    return stamp_date(data, "Thu, 01 Jan 2026 00:00:00 +0000")


def test_a_campaign_stores_its_brochure_once_and_every_message_arrives_whole(shared, smtp_server, cli):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    brochure = _brochure(shared)
    data = shared.csv("c.csv", [{"email": f"u{i}@example.org", "n": i} for i in range(30)])
    queued = cli("send", "--data", data, "--subject", "S {{ n }}", "--body", "B", "--attach", brochure, "--queue-only")
    assert queued.exit_code == 0, queued.output

    [(count, size)] = shared.query("SELECT COUNT(*), SUM(size) FROM attachments")
    assert count == 1
    assert shared.query("SELECT refs FROM attachments") == [(30,)]
    [(skeletons,)] = shared.query("SELECT SUM(LENGTH(mime)) FROM messages")
    assert skeletons < 30 * 2000 < size  # the bodies are not in the messages

    delivered = cli("deliver")
    assert delivered.exit_code == 0, delivered.output
    assert len(srv.messages) == 30
    for received in srv.messages:
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_content() == brochure.read_bytes()


def test_delivered_bytes_are_the_queued_message_byte_for_byte(shared, smtp_server, cli, fixed_boundary):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    brochure = _brochure(shared, 50_000)
    queued = cli(
        "send", "--to", "a@example.org", "--subject", "S", "--body", "Grüße", "--attach", brochure, "--queue-only"
    )
    assert queued.exit_code == 0, queued.output
    [(msg_id, message_id)] = shared.query("SELECT id, message_id FROM messages")
    store = Store.open(shared.database_url)
    try:
        shown, _ = Outbox(store, DeliveryPolicy()).get(msg_id) or ({}, [])
    finally:
        store.close()
    assert cli("deliver").exit_code == 0
    [received] = srv.messages
    assert _without_date(received.data) == _without_date(bytes(shown["mime"]))
    assert message_id.encode() in received.data and BOUNDARY[:-2].encode() in received.data


def test_two_senders_and_a_failover_share_one_stored_attachment(shared, smtp_server, cli):
    good = smtp_server(users={"b@example.com": PASSWORD})
    bad = smtp_server(users={"a@example.com": "another-password"})
    shared.write_config(
        {
            "a": shared.sender(bad, email="a@example.com", password=PASSWORD),
            "b": shared.sender(good, email="b@example.com", password=PASSWORD),
        },
        routes={"default": ["a", "b"], "other": "b"},
    )
    brochure = _brochure(shared, 100_000)
    first = cli("send", "--to", "x@example.org", "--subject", "S", "--body", "B", "--attach", brochure, "--queue-only")
    second = cli(
        "send",
        "--route",
        "other",
        "--to",
        "y@example.org",
        "--subject",
        "S",
        "--body",
        "B",
        "--attach",
        brochure,
        "--queue-only",
    )
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(1,)]
    assert shared.query("SELECT refs FROM attachments") == [(2,)]

    delivered = cli("deliver")
    assert delivered.exit_code == 0, delivered.output
    assert sorted(m.rcpt_tos[0] for m in good.messages) == ["x@example.org", "y@example.org"]
    assert bad.messages == []
    for received in good.messages:
        msg = email.message_from_bytes(received.data, policy=email.policy.default)
        assert msg["From"] == "b@example.com"  # the failover rewrote From on the whole message
        [attachment] = list(msg.iter_attachments())
        assert attachment.get_content() == brochure.read_bytes()

    # purging one message keeps the attachment the other still needs; purging both collects it
    store = Store.open(shared.database_url)
    try:
        outbox = Outbox(store, DeliveryPolicy())
        with store.write() as conn:
            conn.exec_driver_sql("UPDATE messages SET updated_at = 1 WHERE route = 'other'")
        assert outbox.purge(2) == 1
        assert shared.query("SELECT refs FROM attachments") == [(1,)]
        assert outbox.purge(time.time() + 10) == 1
        assert shared.query("SELECT COUNT(*) FROM attachments") == [(0,)]
    finally:
        store.close()


def test_a_send_that_died_after_staging_leaves_nothing_that_is_never_collected(shared, smtp_server, cli):
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    brochure = _brochure(shared, 10_000)
    # what a send killed between staging and queueing leaves: staged rows and their attachment, two days old
    prepared = _build(
        attachments=[brochure],
        message_id="<dead@example.com>",
    )
    old = time.time() - 2 * 86400
    store = Store.open(shared.database_url)
    try:
        Outbox(store, DeliveryPolicy()).stage([_staged_row(prepared, old)])
    finally:
        store.close()
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(1,)]

    result = cli("deliver")
    assert result.exit_code == 0, result.output
    assert shared.query("SELECT COUNT(*) FROM messages") == [(0,)]
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(0,)]
    assert srv.messages == []


def _staged_row(prepared: compose.PreparedEmail, now: float) -> dict[str, Any]:
    return {
        "created_at": now,
        "updated_at": now,
        "run_id": "dead-run",
        "batch": None,
        "dedup_key": "k",
        "route": "default",
        "strategy": "failover",
        "candidates": json.dumps(["sales"]),
        "nominal_sender": "sales",
        "sender": None,
        "envelope_from": prepared.envelope_from,
        "recipients": json.dumps(prepared.envelope_to),
        "to_header": prepared.to_header,
        "subject": prepared.subject,
        "template": None,
        "message_id": prepared.message_id,
        "mime": prepared.skeleton,
        "stored": prepared.stored,
        "row": None,
        "state": STAGED,
        "due_at": now,
    }


def test_messages_queued_before_the_migration_are_delivered_byte_for_byte(shared, smtp_server, cli, tmp_path):
    """A database of the previous schema (step 006) with a queued message holding its whole MIME is migrated
    and the message goes out exactly as it was stored (Date stamped at hand-over, as always)."""
    srv = smtp_server(users={"sales@example.com": PASSWORD})
    shared.write_config(
        {"sales": shared.sender(srv, email="sales@example.com", password=PASSWORD)}, routes={"default": "sales"}
    )
    files = _files(tmp_path)
    whole = _build(
        to=[parse_address("Jürgen <r@example.org>", where="t")],
        subject="Alt",
        text="Text",
        html="<p>Html</p>",
        attachments=[files["brochure.pdf"], files["报告.txt"]],
        message_id="<old.1@example.com>",
    ).mime
    store = Store(shared.database_url)
    try:
        with store.write() as conn:
            old_steps = [step for step in migrations.MIGRATIONS if step[0][:3] <= "006"]
            migrations.upgrade(conn, old_steps)
            now = time.time()
            row = _staged_row(
                compose.PreparedEmail(
                    skeleton=whole,
                    envelope_from="sales@example.com",
                    envelope_to=["r@example.org"],
                    subject="Alt",
                    message_id="<old.1@example.com>",
                    to_header="Jürgen <r@example.org>",
                ),
                now,
            )
            del row["stored"]
            row["state"] = "queued"
            columns = ", ".join(row)
            conn.exec_driver_sql(
                f"INSERT INTO messages ({columns}) VALUES ({', '.join(['%(' + k + ')s' for k in row])})"
                if conn.dialect.name == "postgresql"
                else f"INSERT INTO messages ({columns}) VALUES ({', '.join(['?'] * len(row))})",
                row if conn.dialect.name == "postgresql" else tuple(row.values()),
            )
    finally:
        store.close()

    result = cli("deliver")
    assert result.exit_code == 0, result.output
    assert shared.query("SELECT name FROM schema_migrations WHERE name = '007_attachments'") == [("007_attachments",)]
    [received] = srv.messages
    assert _without_date(received.data) == _without_date(whole)


# ---------------------------------------------------------------- staging and collecting at once, two processes

#: queues messages carrying the brochure, one at a time, and checks its body is stored while the message is
#: queued (right after queueing, and again a moment later), then marks it sent as a delivery would, so that
#: the other process may drop the last reference and collect the body at any moment; the last one stays queued
QUEUER = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from mailops.config import DeliveryPolicy
    from mailops.outbox import Outbox
    from mailops.store import Store
    from tests.test_attachments import _build, _staged_row

    url, brochure, go, done, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    store = Store(url)
    outbox = Outbox(store, DeliveryPolicy())
    lost, generations = [], set()
    for i in range(n):
        prepared = _build(attachments=[brochure], message_id=f"<q{i}@example.com>")
        [(_, part)] = prepared.stored
        row = _staged_row(prepared, time.time())
        row.update(run_id=f"run-{i}", dedup_key=f"k{i}")
        outbox.stage([row])
        outbox.promote(f"run-{i}", time.time())
        with store.read() as conn:  # a new created_at: X was collected since the last message and stored anew
            generations.update(r[0] for r in conn.exec_driver_sql("SELECT created_at FROM attachments"))
        for check in ("queued", "a moment later"):
            if part.digest not in outbox.attachment_bodies([part.digest]):
                lost.append(f"message {i}: body gone ({check})")
            time.sleep(random.random() / 500)
        if i < n - 1:
            with store.write() as conn:
                conn.exec_driver_sql(
                    "UPDATE messages SET state = 'sent', updated_at = 1 WHERE run_id = " + repr(f"run-{i}")
                )
            # a pause of 0 to 5 ms before the next message: the collector gets there first, or does not
            time.sleep(random.random() / 200)
    done.touch()
    print(json.dumps({"lost": lost, "generations": len(generations)}))
    """
)
#: purges sent messages and drops their bodies by retention, by turns, until the queuer is done, then once more
COLLECTOR = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from mailops.config import DeliveryPolicy
    from mailops.outbox import Outbox
    from mailops.store import Store

    url, go, done = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.002)
    store = Store(url)
    outbox = Outbox(store, DeliveryPolicy())
    rounds = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        last = done.exists()
        # retention drops the body (and its reference) and collects; purge deletes what is left of the message
        outbox.expire_bodies(time.time())
        outbox.purge(time.time())
        outbox.collect_attachments()
        rounds += 1
        if last:
            break
    print(json.dumps({"rounds": rounds, "finished": last}))
    """
)


def test_queueing_and_collecting_the_same_attachment_at_once_never_loses_or_strands_it(shared, tmp_path):
    """One process queues messages carrying attachment X while two others drop the last reference to X
    (retention, purge) and collect it: a queued message always finds X, X's count of references stays
    exact (too high, it would be kept for ever; too low, it would go while a message needs it)."""
    Store.open(shared.database_url).close()
    brochure = _brochure(shared, 20_000)
    go, done = tmp_path / "go", tmp_path / "done"
    n = 150
    queuer = _start_python(QUEUER, shared.database_url, str(brochure), str(go), str(done), str(n))
    # two collectors: retention and purge of two hosts at once must not count a reference down twice
    collectors = [_start_python(COLLECTOR, shared.database_url, str(go), str(done)) for _ in range(2)]
    time.sleep(0.3)  # all import and open, then wait for the go file (bounded)
    go.touch()
    [(q_code, q_out, q_err), *collected] = _finish([queuer, *collectors], timeout=120)

    assert q_code == 0, q_err
    for c_code, c_out, c_err in collected:
        assert c_code == 0 and json.loads(c_out)["finished"] is True, c_err
    queued = json.loads(q_out)
    assert queued["lost"] == []
    # the collector did take X away between messages (else this test raced nothing): X was stored anew
    assert queued["generations"] > 1, (queued, collected)
    assert shared.query("SELECT COUNT(*) FROM messages") == [(1,)]  # the last one, queued; the others purged
    [(digest, refs, size)] = shared.query("SELECT digest, refs, size FROM attachments")
    [(parts, state)] = shared.query("SELECT parts, state FROM messages")
    assert state == "queued" and [d for _, d in json.loads(parts)] == [digest] and refs == 1 and size > 20_000

    # and once that message is gone too, nothing keeps X
    store = Store(shared.database_url)
    try:
        with store.write() as conn:
            conn.exec_driver_sql("UPDATE messages SET state = 'sent', updated_at = 1")
        assert Outbox(store, DeliveryPolicy()).purge(time.time()) == 1
    finally:
        store.close()
    assert shared.query("SELECT COUNT(*) FROM attachments") == [(0,)]
