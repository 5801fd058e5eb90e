"""Claiming for delivery: the messages, their suppression entries and their round-robin turns in one transaction,
and on PostgreSQL in two round trips (counted on psycopg's waits for the server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from mailops import hotsql, routing, suppress
from mailops import store as store_module
from mailops.config import DeliveryPolicy
from mailops.errors import StoreError
from mailops.outbox import MESSAGES, ClaimReads, Outbox, QueuedMessage, _claim_statement
from mailops.store import KeptConnection, Store

NOW = 1_764_590_400.5


def _row(i: int, *, candidates: list[str], route: str | None, to: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "created_at": NOW,
        "updated_at": NOW,
        "run_id": "run",
        "route": route,
        "strategy": "round-robin",
        "candidates": json.dumps(candidates),
        "nominal_sender": candidates[0],
        "envelope_from": f"{candidates[0]}@example.com",
        "recipients": json.dumps(to),
        "to_header": ", ".join(to),
        "subject": f"message {i}",
        "message_id": f"<{i}@example.com>",
        "mime": b"Subject: x\r\n\r\n\x00\xff\r\n",
        "row": i,
        "state": "staged",
        "due_at": NOW,
        "include_suppressed": False,  # every row gives the same columns (an executemany takes the first's)
        **extra,
    }


def _turns(messages: list[QueuedMessage]) -> dict[str, int]:
    """Delivery's question, simplified: one turn per message with more than one candidate."""
    counts: dict[str, int] = {}
    for msg in messages:
        if len(msg.candidates) > 1:
            key = routing.turn_key(msg.route, msg.candidates)
            counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.fixture
def outbox(database_url: str) -> Iterator[Outbox]:
    store = Store.open(database_url)
    box = Outbox(store, DeliveryPolicy(lease=60))
    rows = [_row(i, candidates=["a", "b"], route="pool", to=[f"U{i}@Example.org"]) for i in range(5)]
    rows += [_row(i, candidates=["a", "c"], route=None, to=[f"v{i}@example.org", "Gone@Example.org"]) for i in (5, 6)]
    rows.append(_row(7, candidates=["a"], route="solo", to=["gone@example.org"]))
    rows.append(_row(8, candidates=["a", "b"], route="pool", to=["gone@example.org"], include_suppressed=True))
    box.stage(rows)
    box.promote("run", NOW)
    with store.write() as conn:
        suppress.add(conn, ["gone@example.org", "u3@example.org"], reason="bounced", source="bounce", now=NOW)
        suppress.add(conn, ["nobody@example.org"], reason=None, source="manual", now=NOW)
        routing.take_turns(conn, "pool", 10)  # another process took ten turns of the pool before
    yield box
    store.close()


def test_a_claim_brings_its_turns_and_its_recipients_suppression_entries(outbox: Outbox) -> None:
    kept = KeptConnection(outbox.store)
    try:
        first = ClaimReads(turns=_turns)
        claimed = outbox.claim("w1", NOW + 1, 6, reads=first, kept=kept)
        assert [msg.subject for msg in claimed] == [f"message {i}" for i in range(6)]  # id order
        assert first.first_turns == {"pool": 10, "a+c": 0}
        assert first.listed == {"u3@example.org": "bounced", "gone@example.org": "bounced"}
        second = ClaimReads(turns=_turns)
        claimed = outbox.claim("w1", NOW + 1, 10, reads=second, kept=kept)
        assert [msg.subject for msg in claimed] == ["message 6", "message 7", "message 8"]
        # message 8 was queued with --include-suppressed: its recipient is not looked up
        assert second.first_turns == {"a+c": 1, "pool": 15} and second.listed == {"gone@example.org": "bounced"}
        assert outbox.claim("w2", NOW + 1, 10, reads=ClaimReads(turns=_turns), kept=kept) == []
    finally:
        kept.close()
    with outbox.store.read() as conn:
        counters = dict(conn.execute(sa.select(routing.ROUTE_STATE.c.route, routing.ROUTE_STATE.c.counter)).all())
        states = set(conn.execute(sa.select(MESSAGES.c.state, MESSAGES.c.claimed_by)).all())
    assert counters == {"pool": 16, "a+c": 2}
    assert states == {("sending", "w1")}


def test_a_claim_without_reads_takes_no_turns(outbox: Outbox) -> None:
    claimed = outbox.claim("w1", NOW + 1, 100)
    assert len(claimed) == 9 and claimed[0].recipients == ["U0@Example.org"] and claimed[0].candidates == ["a", "b"]
    assert claimed[8].include_suppressed is True and claimed[0].include_suppressed is False
    assert claimed[0].mime == b"Subject: x\r\n\r\n\x00\xff\r\n" and claimed[0].recipient_status == {}
    with outbox.store.read() as conn:
        assert conn.execute(sa.select(routing.ROUTE_STATE.c.counter)).scalars().all() == [10]


def test_a_claim_takes_the_earliest_due_across_queued_deferred_and_expired_leases(outbox: Outbox) -> None:
    # message i: (state, due_at offset, lease_until offset, claimed_by)
    setup = {
        0: ("queued", 5, None, None),
        1: ("deferred", 1, None, None),
        2: ("sending", 3, -1, "w9"),  # another worker's lease expired: claimable
        3: ("sending", 0, -1, "w1"),  # this worker's own claim: never taken back
        4: ("sending", 0, 30, "w9"),  # a lease still running
        5: ("deferred", 50, None, None),  # not due yet
        6: ("queued", 1, None, None),  # same due time as message 1: id order
        7: ("queued", 2, None, None),
        8: ("cancelled", 0, None, None),
    }
    with outbox.store.write() as conn:
        for i, (state, due, lease, worker) in setup.items():
            conn.execute(
                sa.update(MESSAGES)
                .where(MESSAGES.c.subject == f"message {i}")
                .values(
                    state=state,
                    due_at=NOW + due,
                    lease_until=None if lease is None else NOW + 10 + lease,
                    claimed_by=worker,
                )
            )
    first = outbox.claim("w1", NOW + 10, 3)
    assert [msg.subject for msg in first] == ["message 1", "message 6", "message 7"]  # id order of the 3 due first
    rest = outbox.claim("w1", NOW + 10, 10)
    assert [msg.subject for msg in rest] == ["message 0", "message 2"]


def test_a_claim_reads_about_its_limit_of_rows_however_long_the_queue(database_url: str) -> None:
    """One condition for every claimable state made the database read and sort the whole queue at each claim."""
    store = Store.open(database_url)
    box = Outbox(store, DeliveryPolicy(lease=60))
    # as `send` queues them: one due time for all (the id order among them was left to a sort)
    box.stage([_row(i, candidates=["a"], route=None, to=[f"u{i}@example.org"]) for i in range(3000)])
    box.promote("run", NOW)
    stmt = _claim_statement(True, False)
    params = {"b_now": NOW + 5000, "b_worker": "w1", "b_limit": 20, "b_lease_until": NOW + 60, "b_run_id": "run"}
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # A 3000-row table is small enough that reading it all is the planner's cheaper choice, as it should
            # be; what is checked is that the statement lets it read only the first rows of each state.
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            conn.execute(sa.text("ANALYZE messages"))
            sql, bound = hotsql.rows(conn, stmt, [params])
            driver: Any = conn.connection.driver_connection
            [[plan]] = driver.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, bound[0]).fetchall()
            conn.rollback()  # EXPLAIN ANALYZE ran the UPDATE

            def searched(node: dict[str, Any]) -> int:
                """Rows the search for messages to claim read (the UPDATE then finds those by id, as it likes)."""
                own = node["Actual Rows"] * node["Actual Loops"] if node.get("Alias", "messages") != "messages" else 0
                return own + sum(searched(child) for child in node.get("Plans", []))

            assert 20 <= searched(plan[0]["Plan"]) <= 4 * 20  # the 20 to claim, per state, not the 3000 queued
        else:
            compiled = stmt.compile(dialect=conn.dialect)
            values = tuple(params.get(name, compiled.params.get(name)) for name in compiled.positiontup or [])
            steps = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), values)]
            assert not [step for step in steps if step.startswith("SCAN messages")], steps
            # one search per state in (run_id, state, due_at) order: no sort of the run's messages
            assert sum("INDEX ix_messages_run_state_due (run_id=? AND state=?" in step for step in steps) == 3, steps
    store.close()


def test_a_claim_that_fails_midway_takes_nothing(outbox: Outbox) -> None:
    """An error after the claim's statement (here: the turns asked for) rolls the whole claim back."""

    def failing(messages: list[QueuedMessage]) -> dict[str, int]:
        raise RuntimeError("no turns today")

    with pytest.raises(RuntimeError):
        outbox.claim("w1", NOW + 1, 100, reads=ClaimReads(turns=failing))
    assert len(outbox.claim("w2", NOW + 1, 100)) == 9  # all still queued
    with outbox.store.read() as conn:
        assert set(conn.execute(sa.select(MESSAGES.c.claimed_by)).scalars()) == {"w2"}


@contextmanager
def _round_trips() -> Iterator[list[str]]:
    """psycopg's waits for the server, one per round trip: every wait of a connection outside pipeline mode that
    has to wait at all, and each synchronisation of a pipeline (its statements are sent without waiting)."""
    import psycopg

    trips: list[str] = []
    original = psycopg.Connection.wait

    def wait(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(gen, "__qualname__", "")
        counts = self.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF or name.endswith(
            ("_exit_gen", "_sync_gen")
        )

        def watched() -> Any:
            ready: Any = None
            first = True
            try:
                while True:
                    state = gen.send(ready)
                    if first and counts:
                        trips.append(name)
                    first = False
                    ready = yield state
            except StopIteration as stop:
                return stop.value

        return original(self, watched(), *args, **kwargs)

    psycopg.Connection.wait = wait  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        psycopg.Connection.wait = original  # type: ignore[method-assign]


def test_a_claim_on_postgresql_is_two_round_trips(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "KEEP_IDLE_CONNECTION", 3600.0)  # however slow the machine: no new checkout
    store = Store.open(pg_url)
    box = Outbox(store, DeliveryPolicy(lease=60))
    box.stage([_row(i, candidates=["a", "b"], route=f"r{i % 3}", to=[f"u{i}@example.org"]) for i in range(9)])
    box.promote("run", NOW)
    with store.write() as conn:
        suppress.add(conn, ["u4@example.org"], reason="bounced", source="bounce", now=NOW)
    kept = KeptConnection(store)
    try:
        box.claim("w0", NOW - 10, 1, reads=ClaimReads(turns=_turns), kept=kept)  # nothing due yet: a warm-up
        reads = ClaimReads(turns=_turns)
        with _round_trips() as trips:
            claimed = box.claim("w1", NOW + 1, 9, reads=reads, kept=kept)
        assert len(claimed) == 9 and reads.listed == {"u4@example.org": "bounced"}
        assert reads.first_turns == {"r0": 0, "r1": 0, "r2": 0}
        assert len(trips) == 2, trips
        # the connection is back in its normal mode: SQLAlchemy's next transaction is its own
        with kept.write() as conn:
            driver: Any = conn.connection.driver_connection
            assert driver.autocommit is False
            conn.execute(sa.update(MESSAGES).values(state="queued"))
        with _round_trips() as trips:
            assert box.claim("w2", NOW + 1, 100, kept=kept) != []
        assert len(trips) == 2, trips
    finally:
        kept.close()
    store.close()


@pytest.mark.parametrize("idle", [True, False])
def test_a_kept_connection_the_server_dropped_is_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, idle: bool
) -> None:
    """Idle too long, the kept connection goes back to the pool (which checks the next one); one that failed a
    claim is dropped, and the next claim runs on a working one."""
    monkeypatch.setattr(store_module, "KEEP_IDLE_CONNECTION", 0.0 if idle else 3600.0)
    store = Store.open(pg_url)
    box = Outbox(store, DeliveryPolicy(lease=60))
    box.stage([_row(i, candidates=["a"], route=None, to=[f"u{i}@example.org"]) for i in range(3)])
    box.promote("run", NOW)
    kept = KeptConnection(store)
    try:
        assert len(box.claim("w1", NOW + 1, 1, kept=kept)) == 1
        with kept.write() as conn:
            pid = conn.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        with store.write() as conn:
            conn.execute(sa.select(sa.func.pg_terminate_backend(pid)))
        if not idle:
            with pytest.raises((StoreError, sa.exc.DBAPIError)):
                box.claim("w1", NOW + 1, 1, kept=kept)
        assert len(box.claim("w1", NOW + 1, 1, kept=kept)) == 1
    finally:
        kept.close()
    store.close()
