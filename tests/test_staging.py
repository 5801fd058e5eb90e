"""Staging: what ``Outbox.stage`` stores, on SQLite (SQLAlchemy's executemany) and on PostgreSQL (a binary COPY).

The reference is the plain ``INSERT`` through SQLAlchemy that staging used on
both stores before: every column of every staged row must come out the same.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from mailops import outbox as outbox_module
from mailops.compose import StoredPart
from mailops.config import DeliveryPolicy
from mailops.outbox import ATTACHMENTS, MESSAGES, Outbox
from mailops.store import Store

NOW = 1_764_590_400.123456789  # a float whose every bit must survive the trip


def _rows(run_id: str, n: int = 7) -> list[dict[str, Any]]:
    """Rows as sending._row makes them, with awkward values: NUL and high bytes in mime, non-ASCII text, NULLs,
    both booleans, a long float, and attachments shared between rows."""
    brochure = StoredPart(digest="b" * 64, data=b"QUJD\r\n" * 100)
    invoice = StoredPart(digest="a" * 64, data=bytes(range(256)))
    rows = []
    for i in range(n):
        rows.append(
            {
                "created_at": NOW + i / 3,
                "updated_at": NOW,
                "run_id": run_id,
                "batch": None if i % 2 else "spring",
                "dedup_key": f"key-{i}",
                "route": "default" if i % 3 else None,
                "strategy": "round-robin",
                "candidates": json.dumps(["s0", "s1"]),
                "nominal_sender": "s0",
                "sender": None,
                "envelope_from": "s0@example.com",
                "recipients": json.dumps([f"u{i}@example.org", "Zoë <zoe@exämple.org>"]),
                "to_header": f"U {i} <u{i}@example.org>",
                "subject": f"Grüße ✓ {i} \t'\"\\ %s",
                "template": None if i % 2 else "renewal",
                "message_id": f"<{run_id}.{i}@example.com>",
                "mime": bytes(range(256)) + f"\r\nrow {i}\r\n".encode() + b"\x00" * i,
                "stored": ((3, brochure), (40, invoice)) if i % 2 else ((7, brochure),),
                "row": i + 1 if i else None,
                "state": "staged",
                "due_at": NOW + 0.1,
                "keep_date": bool(i % 2),
                "note": None if i % 2 else "a note, with \\N and \n newline",
                "include_suppressed": i == 3,
            }
        )
    return rows


def _stored(store: Store, run_id: str) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(sa.select(MESSAGES).where(MESSAGES.c.run_id == run_id).order_by(MESSAGES.c.id)).all()
    return [{k: v for k, v in row._mapping.items() if k not in ("id", "run_id", "message_id")} for row in rows]


def _insert_through_sqlalchemy(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    conn.execute(sa.insert(MESSAGES), rows)


def test_staged_rows_are_what_a_plain_insert_stores(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store.open(database_url)
    outbox = Outbox(store, DeliveryPolicy())
    assert outbox.stage(_rows("new")) == 7
    with monkeypatch.context() as patched:
        patched.setattr(outbox_module, "_copy_messages", _insert_through_sqlalchemy)
        assert outbox.stage(_rows("reference")) == 7
    new, reference = _stored(store, "new"), _stored(store, "reference")
    assert new == reference
    assert new[0]["attempts"] == 0  # left out by the rows: the column's default, as SQLAlchemy fills it in
    assert new[3]["include_suppressed"] is True and new[2]["row"] == 3 and new[0]["row"] is None
    assert new[1]["mime"] == bytes(range(256)) + b"\r\nrow 1\r\n\x00" and new[0]["created_at"] == NOW
    with store.read() as conn:
        refs = dict(conn.execute(sa.select(ATTACHMENTS.c.digest, ATTACHMENTS.c.refs)).all())
    assert refs == {"a" * 64: 6, "b" * 64: 14}  # 3 and 7 per staging
    # ids follow the rows' order
    with store.read() as conn:
        keys = conn.execute(
            sa.select(MESSAGES.c.dedup_key).where(MESSAGES.c.run_id == "new").order_by(MESSAGES.c.id)
        ).scalars()
        assert list(keys) == [f"key-{i}" for i in range(7)]
    store.close()


def test_rows_without_optional_columns_stage_on_every_store(database_url: str) -> None:
    """Callers that give fewer columns (no strategy, keep_date, note...) get the columns' defaults."""
    store = Store.open(database_url)
    rows = [
        {k: v for k, v in row.items() if k not in ("strategy", "keep_date", "note", "stored")} for row in _rows("r")
    ]
    assert Outbox(store, DeliveryPolicy()).stage(rows) == 7
    stored = _stored(store, "r")
    assert [row["strategy"] for row in stored] == ["failover"] * 7
    assert {row["keep_date"] for row in stored} == {None} and {row["parts"] for row in stored} == {None}
    store.close()


def test_a_bad_row_leaves_nothing_of_its_chunk(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row the database refuses fails its whole chunk (messages and attachment references) with the same
    error the plain INSERT raised; chunks committed before it stay (the caller discards the run)."""
    monkeypatch.setattr(outbox_module, "STAGE_CHUNK", 4)
    store = Store.open(database_url)
    outbox = Outbox(store, DeliveryPolicy())
    bad = _rows("bad")
    bad[5]["subject"] = "NUL \x00 in text"  # PostgreSQL keeps no NUL in text; SQLite does
    errors: list[type[sa.exc.DBAPIError] | None] = []
    for run_id, patched_copy in (("bad", None), ("reference", _insert_through_sqlalchemy)):
        with monkeypatch.context() as patched:
            if patched_copy is not None:
                patched.setattr(outbox_module, "_copy_messages", patched_copy)
            rows = [dict(row, run_id=run_id) for row in bad]
            try:
                outbox.stage(rows)
            except sa.exc.DBAPIError as exc:
                errors.append(type(exc))
            else:
                errors.append(None)
    assert errors[0] == errors[1]
    if store.dialect == "postgresql":
        assert errors[0] is not None
        assert len(_stored(store, "bad")) == 4  # the first chunk; the second is absent
        with store.read() as conn:
            refs = dict(conn.execute(sa.select(ATTACHMENTS.c.digest, ATTACHMENTS.c.refs)).all())
        assert refs == {"a" * 64: 2 * 2, "b" * 64: 2 * 4}  # the first chunk's, once per run
    # the connection that failed went back to the pool usable
    assert outbox.stage(_rows("after")) == 7
    store.close()


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_rows_of_one_chunk_that_differ_in_their_columns_are_refused_before_anything_is_written(
    database_url: str, change: str
) -> None:
    """Both inserts take the columns from a chunk's first row: a later row's own value (a due_at) would be
    dropped silently, a missing one fail half-way. Such a chunk is a bug of the caller's: it stages nothing."""
    store = Store.open(database_url)
    rows = [{k: v for k, v in row.items() if k != "note"} for row in _rows("mixed")]
    if change == "extra":
        rows[4]["note"] = "only this row says so"
    else:
        del rows[4]["batch"]
    with pytest.raises(ValueError, match=r"staged rows differ in their columns: \['(note|batch)'\]"):
        Outbox(store, DeliveryPolicy()).stage(rows)
    assert _stored(store, "mixed") == []
    store.close()
