"""The durable outbox: stage, queue, claim with a lease, record outcomes, and queue maintenance.

Every message is stored (exact MIME bytes and envelope) before any SMTP
traffic. A ``send`` first *stages* its rows in chunked transactions while it
validates the whole batch, then promotes them to ``queued`` in one
transaction, so a bad row leaves nothing behind and memory stays bounded.
Delivery claims messages atomically (``sending`` with a lease); a process
that dies leaves its claims to expire and be picked up again (at-least-once,
same Message-ID).
"""

from __future__ import annotations

import builtins  # Outbox.list shadows list in the class body's annotations
import functools
import json
import threading
import time
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import routing, suppress, tables
from .compose import Splice, splice
from .config import DeliveryPolicy
from .states import CANCELLED, DEFERRED, DUE_STATES, FAILED, QUEUED, SENDING, SENT, STAGED
from .store import KeptConnection, Store, serialize, upsert_insert

MESSAGES = tables.Message
ATTEMPTS = tables.Attempt
ATTACHMENTS = tables.StoredAttachment
STAGE_CHUNK = 500  # rows per staging transaction: bounded memory, short write locks
#: bytes per staging transaction (messages plus the attachment bodies they bring): memory bounded by size, not rows
STAGE_BYTES = 32 * 1024 * 1024
#: messages whose delivery is over but whose body is still kept: the predicate of the partial index
#: ix_messages_kept_bodies (migration 007), written the same way so that the query can use it
KEPT_BODY = "state IN ('sent', 'failed') AND length(mime) > 0"
#: retention drops bodies this many messages per transaction (short write locks), at most RETENTION_ROUNDS
#: transactions per call, so a send or deliver never spends long on it; the next run goes on
RETENTION_BATCH = 200
RETENTION_ROUNDS = 10

#: the oldest kept bodies last changed before :before; SQLite is told the partial index, which its planner
#: (without statistics) would pass over for ix_messages_state_due_id, reading every sent message ever kept
_EXPIRED = {
    sqlite: sa.text(
        f"SELECT id FROM messages{' INDEXED BY ix_messages_kept_bodies' if sqlite else ''} "
        f"WHERE {KEPT_BODY} AND updated_at < :before ORDER BY updated_at LIMIT {RETENTION_BATCH}"
    )
    for sqlite in (False, True)
}

# Hot-path statements, built once (constructing them costs more than running them).
INSERT_ATTEMPT = sa.insert(ATTEMPTS)
MARK_SENT = (
    sa.update(MESSAGES)
    .where(MESSAGES.c.id == sa.bindparam("b_id"))
    .values(
        state=SENT,
        sender=sa.bindparam("b_sender"),
        sent_at=sa.bindparam("b_now"),
        updated_at=sa.bindparam("b_now"),
        lease_until=None,
        claimed_by=None,
        attempts=MESSAGES.c.attempts + 1,
        first_attempt_at=sa.func.coalesce(MESSAGES.c.first_attempt_at, sa.bindparam("b_now")),
        recipient_status=sa.bindparam("b_status"),
        reason=None,
    )
)


@dataclass(frozen=True)
class NotCancelled:
    """Messages of one state that ``cancel`` left alone: already final, or in flight in another process."""

    state: str  # sent, failed, cancelled (earlier) or sending
    count: int
    at: float | None  # sent, failed or cancelled at (the latest of them); for sending: when the claim runs out
    first_id: int  # the lowest id among them (the message itself when count is 1)
    reason: str | None  # the stored reason when count is 1 (a server's reply for failed: untrusted text)


@dataclass(frozen=True)
class CancelResult:
    """What ``Outbox.cancel`` did: how many it cancelled, and what it could not cancel, per state."""

    cancelled: int
    not_cancelled: builtins.list[NotCancelled]


@dataclass
class QueuedMessage:
    """A claimed message, as delivery needs it."""

    id: int
    run_id: str
    batch: str | None
    route: str | None
    strategy: str
    candidates: list[str]
    nominal_sender: str
    envelope_from: str
    recipients: list[str]
    subject: str
    template: str | None
    message_id: str
    mime: bytes
    attempts: int
    created_at: float
    first_attempt_at: float | None
    recipient_status: dict[str, str]
    keep_date: bool = False  # a piped message's own Date, sent as written (see gateway)
    parts: list[tuple[int, str]] = field(default_factory=list)  # (offset in mime, digest) of stored attachments
    include_suppressed: bool = False  # queued with --include-suppressed: delivery leaves no recipient out

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> QueuedMessage:
        """Build from a claim's row: the values of :data:`CLAIM_COLUMNS`, in that order (a SQLAlchemy row or
        the driver's tuple)."""
        (
            id_,
            run_id,
            batch,
            route,
            strategy,
            candidates,
            nominal_sender,
            envelope_from,
            recipients,
            subject,
            template,
            message_id,
            mime,
            attempts,
            created_at,
            first_attempt_at,
            recipient_status,
            keep_date,
            parts,
            include_suppressed,
        ) = row
        return cls(
            id_,
            run_id,
            batch,
            route,
            strategy,
            _loads(candidates),
            nominal_sender,
            envelope_from,
            json.loads(recipients),
            subject,
            template,
            message_id,
            mime if type(mime) is bytes else bytes(mime),
            attempts,
            created_at,
            first_attempt_at,
            json.loads(recipient_status) if recipient_status else {},
            bool(keep_date),
            [(int(offset), str(digest)) for offset, digest in json.loads(parts)] if parts else [],
            bool(include_suppressed),
        )

    @property
    def pending_recipients(self) -> list[str]:
        """Recipients not yet accepted or permanently refused (a partial refusal retries only the rest)."""
        return [r for r in self.recipients if r not in self.recipient_status]


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _loads(text: str) -> list[str]:
    """A JSON list of strings, parsed once per distinct text (a run's messages share their candidates)."""
    return list(_parsed(text))


#: the columns a claim returns, in the order :meth:`QueuedMessage.from_row` takes them
CLAIM_COLUMNS = [
    MESSAGES.c[name]
    for name in [
        "id",
        "run_id",
        "batch",
        "route",
        "strategy",
        "candidates",
        "nominal_sender",
        "envelope_from",
        "recipients",
        "subject",
        "template",
        "message_id",
        "mime",
        "attempts",
        "created_at",
        "first_attempt_at",
        "recipient_status",
        "keep_date",
        "parts",
        "include_suppressed",
    ]
]


_CLAIMS: dict[tuple[bool, bool], Any] = {}


def _claim_statement(by_run: bool, by_batch: bool) -> Any:
    """The claim's UPDATE ... RETURNING (of one run, of one batch, or of any), built once: building it costs
    more than running it, and a delivery run claims every few dozen messages."""
    stmt = _CLAIMS.get((by_run, by_batch))
    if stmt is None:
        now = sa.bindparam("b_now", type_=sa.Float)
        limit = sa.bindparam("b_limit", type_=sa.Integer)
        # The states written out (constants), not parameters: the statement also runs as plain SQL in a psycopg
        # pipeline (:meth:`Outbox.claim`). One branch per state, each the first due messages of that state in
        # the order of an index (migration 013: state, due_at, id; with run_id or batch first for a run's or a
        # batch's claim): a claim reads about `limit` rows per branch however long the queue is. (One condition
        # for all states made PostgreSQL read and sort every due message at each claim: 26 ms per claim with
        # 50,000 queued, and a run claims every few dozen messages.)
        due = [
            (MESSAGES.c.state == sa.literal_column(f"'{state}'")) & (MESSAGES.c.due_at <= now) for state in DUE_STATES
        ]
        due.append(
            (MESSAGES.c.state == sa.literal_column(f"'{SENDING}'"))
            & (MESSAGES.c.lease_until < now)
            & sa.or_(MESSAGES.c.claimed_by.is_(None), MESSAGES.c.claimed_by != sa.bindparam("b_worker"))
        )
        branches = []
        for condition in due:
            if by_run:
                condition = condition & (MESSAGES.c.run_id == sa.bindparam("b_run_id"))
            if by_batch:
                condition = condition & (MESSAGES.c.batch == sa.bindparam("b_batch"))
            # FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite ignores it (BEGIN IMMEDIATE already serialises).
            # A row a branch locks and the final LIMIT leaves out stays unclaimed (unlocked at the commit).
            branch = sa.select(MESSAGES.c.id, MESSAGES.c.due_at).where(condition)
            branch = branch.order_by(MESSAGES.c.due_at, MESSAGES.c.id).limit(limit).with_for_update(skip_locked=True)
            inner = branch.subquery()
            branches.append(sa.select(inner.c.id, inner.c.due_at))
        found = sa.union_all(*branches).subquery()
        ids = sa.select(found.c.id).order_by(found.c.due_at, found.c.id).limit(limit)
        stmt = _CLAIMS[(by_run, by_batch)] = (
            sa.update(MESSAGES)
            .where(MESSAGES.c.id.in_(ids.scalar_subquery()))
            .values(
                state=SENDING,
                claimed_by=sa.bindparam("b_worker"),
                lease_until=sa.bindparam("b_lease_until", type_=sa.Float),
                updated_at=now,
            )
            .returning(*CLAIM_COLUMNS)
        )
    return stmt


def _first(row: Sequence[Any]) -> Any:
    return row[0]


def _one(conn: Connection, stmt: Any, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``stmt`` with ``params`` as psycopg runs it in a pipeline (see :mod:`mailops.pgpipeline`)."""
    from . import hotsql

    sql, (bound,) = hotsql.rows(conn, stmt, [params])
    return sql, bound


@dataclass
class ClaimReads:
    """What delivery reads and takes in a claim's transaction besides the messages (see :meth:`Outbox.claim`)."""

    #: round-robin turns to take for the claimed messages: turn key -> how many
    turns: Callable[[builtins.list[QueuedMessage]], dict[str, int]]
    #: out: the suppression entries (stored form -> reason) of the claimed messages' pending recipients
    listed: dict[str, str] = field(default_factory=dict)
    #: out: the first of the turns taken, per turn key
    first_turns: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def wanted(messages: builtins.list[QueuedMessage]) -> builtins.list[str]:
        """The stored forms to look up: the pending recipients of messages not queued with --include-suppressed."""
        return list(
            dict.fromkeys(
                suppress.key(rcpt) for msg in messages if not msg.include_suppressed for rcpt in msg.pending_recipients
            )
        )


class Bodies:
    """Whole messages for delivery: a claimed message's ``mime`` with its stored attachments spliced back in.

    Attachment bodies are read from the database once and kept while they fit in
    ``max_bytes`` (least recently used dropped first), so a campaign's brochure
    is read once per process, not once per message. Thread-safe: every worker
    of a delivery run shares one.
    """

    def __init__(self, outbox: Outbox, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.outbox = outbox
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def whole(self, msg: QueuedMessage) -> bytes:
        """The message as queued, byte for byte; RuntimeError if an attachment it references is gone."""
        if not msg.parts:
            return msg.mime
        found: dict[str, bytes] = {}
        with self._lock:
            for _, digest in msg.parts:
                if digest in self._items:
                    self._items.move_to_end(digest)
                    found[digest] = self._items[digest]
        missing = [digest for _, digest in msg.parts if digest not in found]
        if missing:
            loaded = self.outbox.attachment_bodies(missing)
            if len(loaded) < len(set(missing)):
                raise RuntimeError(f"message {msg.id}: a stored attachment it references is missing from the database")
            found.update(loaded)
            self._keep(loaded)
        return splice(msg.mime, [(offset, found[digest]) for offset, digest in msg.parts])

    def _keep(self, loaded: dict[str, bytes]) -> None:
        with self._lock:
            for digest, data in loaded.items():
                if digest in self._items or len(data) > self.max_bytes:
                    continue
                self._items[digest] = data
                self._bytes += len(data)
            while self._bytes > self.max_bytes:  # bounded: each pass drops one entry
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def _add_references(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Store attachments, or add ``refs`` to those already stored (an upsert on SQLite and PostgreSQL).

    Atomic against :meth:`Outbox.collect_attachments` on PostgreSQL too: a row it is deleting makes the
    upsert wait, then insert the attachment anew.
    """
    stmt = upsert_insert(conn.dialect.name, ATTACHMENTS)
    upsert = stmt.on_conflict_do_update(
        index_elements=[ATTACHMENTS.c.digest], set_={"refs": ATTACHMENTS.c.refs + stmt.excluded.refs}
    )
    conn.execute(upsert, rows)


#: per engine: the server's type OID of each ``messages`` column (a binary COPY must name them exactly)
_COLUMN_TYPES: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def _copy_messages(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``messages`` on PostgreSQL with one binary ``COPY``, in ``conn``'s transaction.

    What ``conn.execute(sa.insert(MESSAGES), rows)`` stores, column for column (the columns a row leaves out
    get their Python-side default, as SQLAlchemy gives them; ids in row order), at a fraction of the cost:
    psycopg sends an executemany as one INSERT per row (each bound, executed and answered on its own), a
    ``COPY`` streams the rows in a few writes and the server parses no SQL per row.
    """
    from . import hotsql

    pg: Any = conn.connection.driver_connection
    given = list(rows[0])
    defaults = [
        (column.name, column.default.arg)  # type: ignore[attr-defined]  # is_scalar: a ScalarElementColumnDefault
        for column in MESSAGES.c
        if column.name not in rows[0] and column.default is not None and column.default.is_scalar
    ]
    names = given + [name for name, _ in defaults]
    with hotsql.errors(conn), pg.cursor() as cur:
        types = _COLUMN_TYPES.get(conn.engine)
        if types is None:  # once per process: the server's own types (a migration's, not tables.py's guess)
            cur.execute(
                "SELECT attname, atttypid::int FROM pg_attribute"
                " WHERE attrelid = 'messages'::regclass AND attnum > 0 AND NOT attisdropped"
            )
            types = _COLUMN_TYPES[conn.engine] = {str(name): int(oid) for name, oid in cur.fetchall()}
        fixed = [value for _, value in defaults]
        columns = ", ".join(f'"{name}"' for name in names)
        with cur.copy(f"COPY messages ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([types[name] for name in names])
            for row in rows:
                copy.write_row([row[name] for name in given] + fixed)


def retry_delay(failures: int, policy: DeliveryPolicy) -> float:
    """Seconds to wait after the ``failures``-th temporary failure: doubling from retry_initial up to retry_max."""
    return min(policy.retry_initial * (2.0 ** max(failures - 1, 0)), policy.retry_max)


class Outbox:
    """Queue operations on a Store."""

    def __init__(self, store: Store, policy: DeliveryPolicy) -> None:
        self.store = store
        self.policy = policy

    # ------------------------------------------------------------ enqueue

    def stage(self, rows: Iterable[dict[str, Any]]) -> int:
        """Write rows (``messages`` column dicts, state staged) in chunked transactions; returns how many.

        A row may carry ``stored``: the attachment bodies (compose.Splice) its ``mime`` leaves out. Each
        distinct body is stored once (by digest) in the chunk's transaction, with the row's references, so
        a chunk is whole or absent. A chunk ends at STAGE_CHUNK rows or STAGE_BYTES, whichever comes first.
        """
        total = 0
        chunk: list[dict[str, Any]] = []
        size = 0
        digests: set[str] = set()
        for row in rows:
            chunk.append(row)
            size += len(row["mime"])
            for _, part in row.get("stored", ()):
                if part.digest not in digests:
                    digests.add(part.digest)
                    size += len(part.data)
            if len(chunk) >= STAGE_CHUNK or size >= STAGE_BYTES:
                total += self._insert(chunk)
                chunk, size, digests = [], 0, set()
        if chunk:
            total += self._insert(chunk)
        return total

    def _insert(self, chunk: list[dict[str, Any]]) -> int:
        rows: list[dict[str, Any]] = []
        bodies: dict[str, bytes] = {}
        refs: Counter[str] = Counter()
        for row in chunk:
            splices: tuple[Splice, ...] = tuple(row.get("stored", ()))
            values = {k: v for k, v in row.items() if k != "stored"}
            values["parts"] = json.dumps([[offset, part.digest] for offset, part in splices]) if splices else None
            if rows and values.keys() != rows[0].keys():
                # Both inserts take their columns from the first row: another row's extra value would be
                # dropped without a word (a due_at, say), a missing one fail half-way.
                raise ValueError(f"staged rows differ in their columns: {sorted(values.keys() ^ rows[0].keys())}")
            for _, part in splices:
                bodies.setdefault(part.digest, part.data)
            refs.update({part.digest for _, part in splices})
            rows.append(values)
        with self.store.write() as conn:
            if conn.dialect.name == "postgresql":
                _copy_messages(conn, rows)
            else:
                conn.execute(sa.insert(MESSAGES), rows)
            if bodies:
                now = rows[0]["created_at"]
                _add_references(
                    conn,
                    [  # in digest order: two hosts staging the same attachments lock their rows in one order
                        {"digest": d, "size": len(bodies[d]), "refs": refs[d], "created_at": now, "data": bodies[d]}
                        for d in sorted(bodies)
                    ],
                )
        return len(rows)

    @staticmethod
    def _count_down(conn: Connection, parts: Iterable[str | None]) -> int:
        """Count down the attachments named by these ``parts`` values (of messages whose rows or bodies are
        going, in this transaction); returns how many references went."""
        gone: Counter[str] = Counter()
        for text in parts:
            if text is not None:
                gone.update({digest for _, digest in json.loads(text)})
        if gone:
            conn.execute(
                sa.update(ATTACHMENTS)
                .where(ATTACHMENTS.c.digest == sa.bindparam("b_digest"))
                .values(refs=ATTACHMENTS.c.refs - sa.bindparam("b_gone")),
                [{"b_digest": d, "b_gone": n} for d, n in sorted(gone.items())],
            )
        return sum(gone.values())

    @classmethod
    def _delete_messages(cls, conn: Connection, cond: Any) -> tuple[int, int]:
        """Delete the messages matching ``cond`` and count down the attachments they referenced, in this
        transaction; returns (messages deleted, references dropped).

        The references counted down are those of exactly the rows deleted. On PostgreSQL (READ COMMITTED)
        every statement sees what was committed when it started: a SELECT of the references and then a
        DELETE with the same condition can see different rows (a message another process marked sent in
        between is deleted with its reference still counted, and its attachment is kept for ever; one
        that stopped matching keeps its row but loses its reference, and its attachment can go while it
        is queued). DELETE ... RETURNING is one statement. (SQLite before 3.35 has no RETURNING; its
        writers take turns there, so both statements see the same rows.)
        """
        if conn.dialect.delete_returning:
            gone = [row.parts for row in conn.execute(sa.delete(MESSAGES).where(cond).returning(MESSAGES.c.parts))]
            return len(gone), cls._count_down(conn, gone)
        parts = conn.execute(sa.select(MESSAGES.c.parts).where(cond & MESSAGES.c.parts.is_not(None))).scalars()
        dropped = cls._count_down(conn, list(parts))
        return conn.execute(sa.delete(MESSAGES).where(cond)).rowcount, dropped

    def collect_attachments(self) -> int:
        """Delete stored attachments no message references any more; returns how many."""
        with self.store.write() as conn:
            return conn.execute(sa.delete(ATTACHMENTS).where(ATTACHMENTS.c.refs <= 0)).rowcount

    def _delete(self, cond: Any) -> int:
        """Delete the messages matching ``cond`` with their attachment references, then any attachment left
        unreferenced; returns how many messages."""
        with self.store.write() as conn:
            count, dropped = self._delete_messages(conn, cond)
        if dropped:
            self.collect_attachments()
        if count:
            self.store.reclaim_space()
        return count

    def expire_bodies(self, before: float, now: float | None = None) -> int:
        """Drop the bodies of sent and failed messages last changed before ``before`` (retention), oldest
        first, RETENTION_BATCH per transaction and at most RETENTION_ROUNDS transactions; returns how many.
        Each message records when (``body_removed_at``: ``now``, default the clock), for ``queue show``.

        The message rows stay (Message-ID, recipients, outcome, reason), and so does the log; attachments
        no message references any more are deleted and SQLite gives the space back. A message without its
        body cannot be retried (see :meth:`retry_refused`).
        """
        total = references = 0
        for _ in range(RETENTION_ROUNDS):
            with self.store.write() as conn:
                ids = [row.id for row in conn.execute(_EXPIRED[conn.dialect.name == "sqlite"], {"before": before})]
                kept: Sequence[Any] = ()
                if ids:
                    # Locked, and checked again: on PostgreSQL another host's retention may have dropped some of
                    # these bodies since the SELECT (with their references: counting them down twice would let
                    # an attachment go that queued messages still need); FOR UPDATE waits for it and then
                    # reads the rows as it left them. SQLite's writers take turns: there it changes nothing.
                    kept = conn.execute(
                        sa.select(MESSAGES.c.id, MESSAGES.c.parts)
                        .where(MESSAGES.c.id.in_(ids) & sa.text(KEPT_BODY))
                        .with_for_update()
                    ).all()
                    references += self._count_down(conn, [row.parts for row in kept])
                    conn.execute(
                        sa.update(MESSAGES)
                        .where(MESSAGES.c.id.in_([row.id for row in kept]))
                        .values(mime=b"", parts=None, body_removed_at=time.time() if now is None else now)
                    )
            total += len(kept)
            if len(ids) < RETENTION_BATCH:
                break
        if references:
            self.collect_attachments()
        if total:
            self.store.reclaim_space()
        return total

    def attachment_bodies(self, digests: Iterable[str]) -> dict[str, bytes]:
        """The stored attachment bodies by digest (those that exist)."""
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}
        with self.store.read() as conn:
            rows = conn.execute(
                sa.select(ATTACHMENTS.c.digest, ATTACHMENTS.c.data).where(ATTACHMENTS.c.digest.in_(wanted))
            )
            return {str(row.digest): bytes(row.data) for row in rows}

    def promote(self, run_id: str, now: float, due_at: float | None = None) -> tuple[int, int]:
        """Queue a run's staged messages in one transaction, due at ``due_at`` (default: now); returns
        (queued, skipped as already in the batch).

        A message whose batch already holds the same row (same dedup key) sent,
        queued, deferred or in flight is skipped, so a re-run with ``--batch``
        sends only what is missing.
        """
        other = MESSAGES.alias("other")
        duplicate = (
            sa.select(other.c.id)
            .where(
                (other.c.batch == MESSAGES.c.batch)
                & (other.c.dedup_key == MESSAGES.c.dedup_key)
                & other.c.state.in_([QUEUED, SENDING, SENT, DEFERRED])
            )
            .exists()
        )
        with self.store.write() as conn:
            # Two hosts queueing the same batch at once must not both miss the other's rows: on PostgreSQL
            # (READ COMMITTED) the EXISTS below sees only committed rows, so promotions take turns.
            serialize(conn, "promote")
            already = (
                (MESSAGES.c.run_id == run_id) & (MESSAGES.c.state == STAGED) & MESSAGES.c.batch.is_not(None) & duplicate
            )
            skipped, dropped = self._delete_messages(conn, already)
            queued = conn.execute(
                sa.update(MESSAGES)
                .where((MESSAGES.c.run_id == run_id) & (MESSAGES.c.state == STAGED))
                .values(state=QUEUED, due_at=now if due_at is None else due_at, updated_at=now)
            ).rowcount
        if dropped:
            self.collect_attachments()
        return queued, skipped

    def discard(self, run_id: str) -> int:
        """Delete a run's staged messages (validation failed or the run was interrupted)."""
        return self._delete((MESSAGES.c.run_id == run_id) & (MESSAGES.c.state == STAGED))

    def discard_abandoned(self, older_than: float) -> int:
        """Delete staged rows left by a send that died while validating (they were never queued), and the
        attachments only they referenced."""
        return self._delete((MESSAGES.c.state == STAGED) & (MESSAGES.c.created_at < older_than))

    # ------------------------------------------------------------ claim

    def claim(
        self,
        worker: str,
        now: float,
        limit: int,
        run_id: str | None = None,
        batch: str | None = None,
        *,
        reads: ClaimReads | None = None,
        kept: KeptConnection | None = None,
    ) -> list[QueuedMessage]:
        """Atomically take up to ``limit`` due messages (or another worker's whose lease expired) for ``worker``,
        only of one run or one batch when given; returned in id order.

        A worker never takes back its own claims: they are in its hands (perhaps
        with a server right now) however late their renewal is.

        ``reads`` (delivery's) asks the same transaction for the suppression entries of the claimed messages'
        pending recipients (not of those queued with --include-suppressed) and for round-robin turns; on
        PostgreSQL the whole claim is then two round trips: ``BEGIN`` and the claim, then the lookup, the
        turns and ``COMMIT``. ``kept``: the caller's connection for its claims, else one from the pool.
        """
        from . import pgpipeline

        params: dict[str, Any] = {
            "b_now": now,
            "b_worker": worker,
            "b_limit": limit,
            "b_lease_until": now + self.policy.lease,
            "b_run_id": run_id,
            "b_batch": batch,
        }
        stmt = _claim_statement(run_id is not None, batch is not None)
        with kept.write() if kept is not None else self.store.write() as db:
            if db.dialect.name == "postgresql" and pgpipeline.supported():
                with pgpipeline.transaction(db) as tx:
                    (rows,) = tx.begin([_one(db, stmt, params)])
                    messages = self._claimed(rows)
                    self._reads_pipelined(db, tx, messages, reads)
            else:
                messages = self._claimed(db.execute(stmt, params).all())
                if reads is not None:
                    wanted = reads.wanted(messages)
                    reads.listed = suppress.lookup(db, wanted) if wanted else {}
                    reads.first_turns = {
                        key: routing.take_turns(db, key, count) for key, count in reads.turns(messages).items()
                    }
        return messages

    @staticmethod
    def _claimed(rows: Iterable[Sequence[Any]]) -> builtins.list[QueuedMessage]:
        return [QueuedMessage.from_row(row) for row in sorted(rows, key=_first)]

    @staticmethod
    def _reads_pipelined(
        db: Connection, tx: Any, messages: builtins.list[QueuedMessage], reads: ClaimReads | None
    ) -> None:
        """The second round trip of a claim on PostgreSQL: the suppression lookup and the turns, and ``COMMIT``."""

        statements = []
        wanted = reads.wanted(messages) if reads is not None else []
        if wanted:
            statements.append(_one(db, suppress.LOOKUP_ANY, {"b_keys": wanted}))
        counts = reads.turns(messages) if reads is not None else {}
        turns = routing.turns_statement(db.dialect.name)
        statements += [_one(db, turns, {"b_route": key, "b_count": n}) for key, n in counts.items()]
        replies = tx.run(statements, [], commit=True)
        if reads is not None:
            reads.listed = suppress.reasons(replies[0]) if wanted else {}
            last = replies[1:] if wanted else replies
            reads.first_turns = {key: rows[0][0] - n for (key, n), rows in zip(counts.items(), last, strict=True)}

    def renew(self, worker: str, ids: list[int], now: float) -> None:
        """Extend the lease of messages this worker still holds."""
        if ids:
            # SKIP LOCKED (PostgreSQL): a row locked right now is being settled by its worker's outcome
            # transaction; waiting for it could close a lock cycle with that worker, and its lease no longer
            # matters. The next renewal (a third of the lease later) covers any row skipped for another reason.
            held = (
                sa.select(MESSAGES.c.id)
                .where(MESSAGES.c.id.in_(ids) & (MESSAGES.c.claimed_by == worker) & (MESSAGES.c.state == SENDING))
                .with_for_update(skip_locked=True)
            )
            with self.store.write() as conn:
                conn.execute(
                    sa.update(MESSAGES)
                    .where(MESSAGES.c.id.in_(held.scalar_subquery()))
                    .values(lease_until=now + self.policy.lease)
                )

    def unclaim(self, worker: str, ids: list[int], now: float) -> int:
        """Return claimed but unattempted messages to the queue (Ctrl-C, deadline)."""
        if not ids:
            return 0
        with self.store.write() as conn:
            return conn.execute(
                sa.update(MESSAGES)
                .where(MESSAGES.c.id.in_(ids) & (MESSAGES.c.claimed_by == worker) & (MESSAGES.c.state == SENDING))
                .values(state=QUEUED, claimed_by=None, lease_until=None, updated_at=now)
            ).rowcount

    # ------------------------------------------------------------ outcomes (inside the caller's write transaction)

    @staticmethod
    def mark_sent(
        conn: Connection, msg: QueuedMessage, sender: str, now: float, recipient_status: dict[str, str]
    ) -> None:
        """The server accepted the message (refused recipients are recorded in ``recipient_status``)."""
        conn.execute(
            MARK_SENT,
            {"b_id": msg.id, "b_sender": sender, "b_now": now, "b_status": json.dumps(recipient_status)},
        )

    @staticmethod
    def mark_sent_many(conn: Connection, sent: builtins.list[tuple[QueuedMessage, str, float, dict[str, str]]]) -> None:
        """:meth:`mark_sent` for several messages, ``(message, sender, now, recipient_status)`` each, in one
        statement (an executemany: psycopg sends it in one pipeline, not a round trip per row)."""
        if sent:
            conn.execute(MARK_SENT, Outbox.sent_params(sent))

    @staticmethod
    def sent_params(
        sent: builtins.list[tuple[QueuedMessage, str, float, dict[str, str]]],
    ) -> builtins.list[dict[str, Any]]:
        """The parameters of :data:`MARK_SENT` for ``(message, sender, now, recipient_status)`` each."""
        return [
            {"b_id": msg.id, "b_sender": sender, "b_now": now, "b_status": json.dumps(status)}
            for msg, sender, now, status in sent
        ]

    @staticmethod
    def _settle(
        conn: Connection,
        msg: QueuedMessage,
        values: dict[str, Any],
        now: float,
        attempted: bool,
        sender: str | None,
        recipient_status: dict[str, str] | None,
    ) -> None:
        values.update(updated_at=now, lease_until=None, claimed_by=None)
        if attempted:
            values["attempts"] = MESSAGES.c.attempts + 1
            values["first_attempt_at"] = sa.func.coalesce(MESSAGES.c.first_attempt_at, now)
        if sender:
            values["sender"] = sender
        if recipient_status is not None:
            values["recipient_status"] = json.dumps(recipient_status)
        conn.execute(sa.update(MESSAGES).where(MESSAGES.c.id == msg.id).values(**values))

    @staticmethod
    def mark_deferred(
        conn: Connection,
        msg: QueuedMessage,
        until: float,
        reason: str,
        now: float,
        *,
        attempted: bool,
        sender: str | None = None,
        recipient_status: dict[str, str] | None = None,
    ) -> None:
        """Put the message back to wait until ``until``; ``attempted`` counts a real SMTP try."""
        values = {"state": DEFERRED, "due_at": until, "reason": reason}
        Outbox._settle(conn, msg, values, now, attempted, sender, recipient_status)

    @staticmethod
    def mark_cancelled(conn: Connection, msg: QueuedMessage, reason: str, now: float, status: dict[str, str]) -> None:
        """Not sent, and never will be: every recipient left is on the suppression list."""
        Outbox._settle(conn, msg, {"state": CANCELLED, "reason": reason}, now, False, None, status)

    @staticmethod
    def mark_failed(
        conn: Connection,
        msg: QueuedMessage,
        reason: str,
        now: float,
        *,
        attempted: bool,
        sender: str | None = None,
        recipient_status: dict[str, str] | None = None,
    ) -> None:
        """Final failure: permanent refusal, or gave up after the retry age."""
        Outbox._settle(conn, msg, {"state": FAILED, "reason": reason}, now, attempted, sender, recipient_status)

    @staticmethod
    def log(conn: Connection, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Append attempt rows to the log."""
        if rows:
            conn.execute(INSERT_ATTEMPT, rows)

    # ------------------------------------------------------------ maintenance (`mailops queue`)

    def list(
        self,
        *,
        state: str | None = None,
        batch: str | None = None,
        sender: str | None = None,
        limit: int | None = 50,
    ) -> list[dict[str, Any]]:
        """Messages newest first, without their MIME body; ``limit`` None: all of them."""
        cols = [c for c in MESSAGES.c if c.name not in ("mime", "parts")]
        query = sa.select(*cols).where(*self._matching(state, batch, sender)).order_by(MESSAGES.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.store.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def counts(
        self, *, state: str | None = None, batch: str | None = None, sender: str | None = None
    ) -> dict[str, int]:
        """Number of messages per state, of those :meth:`list` would show with the same filters."""
        query = sa.select(MESSAGES.c.state, sa.func.count()).where(*self._matching(state, batch, sender))
        with self.store.read() as conn:
            return dict(conn.execute(query.group_by(MESSAGES.c.state)).all())

    @staticmethod
    def _matching(state: str | None, batch: str | None, sender: str | None) -> builtins.list[Any]:
        """The conditions of the ``queue list`` filters; a queued message matches the sender it is meant for."""
        conditions: builtins.list[Any] = []
        if state:
            conditions.append(MESSAGES.c.state == state)
        if batch:
            conditions.append(MESSAGES.c.batch == batch)
        if sender:
            conditions.append(
                (MESSAGES.c.sender == sender) | ((MESSAGES.c.sender.is_(None)) & (MESSAGES.c.nominal_sender == sender))
            )
        return conditions

    def get(self, msg_id: int) -> tuple[dict[str, Any], builtins.list[dict[str, Any]]] | None:
        """One message with its attempts, or None."""
        with self.store.read() as conn:
            row = conn.execute(sa.select(MESSAGES).where(MESSAGES.c.id == msg_id)).first()
            if row is None:
                return None
            attempts = conn.execute(
                sa.select(ATTEMPTS).where(ATTEMPTS.c.message_pk == msg_id).order_by(ATTEMPTS.c.id)
            ).all()
        message = dict(row._mapping)
        parts = json.loads(message.pop("parts") or "[]")
        if parts:  # the whole message, attachments spliced back in
            bodies = self.attachment_bodies(digest for _, digest in parts)
            message["mime"] = splice(bytes(message["mime"]), [(at, bodies.get(d, b"")) for at, d in parts])
        return message, [dict(a._mapping) for a in attempts]

    def ids_of_run(self, run_id: str) -> builtins.list[int]:
        """The ids of the messages one run queued, in order (what ``mailops.api`` returns)."""
        with self.store.read() as conn:
            query = sa.select(MESSAGES.c.id).where(MESSAGES.c.run_id == run_id).order_by(MESSAGES.c.id)
            return [int(row.id) for row in conn.execute(query)]

    def exists(self, *, msg_id: int | None = None, batch: str | None = None) -> bool:
        """True if the outbox holds the message ``msg_id`` (or any message of ``batch``)."""
        cond = (MESSAGES.c.id == msg_id) if msg_id is not None else (MESSAGES.c.batch == batch)
        with self.store.read() as conn:
            return conn.execute(sa.select(MESSAGES.c.id).where(cond).limit(1)).first() is not None

    def _select(self, msg_id: int | None, batch: str | None, all_: bool) -> Any:
        if msg_id is not None:
            return MESSAGES.c.id == msg_id
        if batch is not None:
            return MESSAGES.c.batch == batch
        if all_:
            return sa.true()
        raise ValueError("nothing selected")

    def retry(self, now: float, *, msg_id: int | None = None, batch: str | None = None, all_: bool = False) -> int:
        """Make deferred or failed messages due now (a failed one starts a fresh retry window).

        See :meth:`retry_refused`.
        """
        return self.retry_refused(now, msg_id=msg_id, batch=batch, all_=all_)[0]

    def retry_refused(
        self, now: float, *, msg_id: int | None = None, batch: str | None = None, all_: bool = False
    ) -> tuple[int, builtins.list[str]]:
        """:meth:`retry`, returning also the permanently refused recipients that are tried again.

        A failed message's refused recipients get their turn again (recipients that
        got it keep their ``sent``), so a retried message never has an empty envelope;
        delivery does not leave them out for being on the suppression list (a bounce put them there).
        """
        # a message whose body retention dropped cannot be sent again
        target = self._select(msg_id, batch, all_) & (sa.func.length(MESSAGES.c.mime) > 0)
        has_refused = MESSAGES.c.recipient_status.contains('"failed:', autoescape=True)
        # A sent message whose server refused some recipients is a failure of those recipients.
        chosen = target & (
            MESSAGES.c.state.in_([DEFERRED, FAILED, QUEUED]) | ((MESSAGES.c.state == SENT) & has_refused)
        )
        again: list[str] = []
        with self.store.write() as conn:
            rows = conn.execute(sa.select(MESSAGES.c.id, MESSAGES.c.recipient_status).where(chosen & has_refused)).all()
            for row in rows:
                status = json.loads(row.recipient_status or "{}")
                refused = [r for r, v in status.items() if v.startswith("failed")]
                again.extend(refused)
                kept = {r: v for r, v in status.items() if r not in refused}
                # The operator asks for these recipients again: the bounce that put them on the suppression list
                # does not stop this message (delivery would otherwise leave them out again).
                conn.execute(
                    sa.update(MESSAGES)
                    .where(MESSAGES.c.id == row.id)
                    .values(recipient_status=json.dumps(kept), include_suppressed=True)
                )
            retried = [row.id for row in rows]
            count = conn.execute(
                sa.update(MESSAGES)
                .where(target & (MESSAGES.c.state.in_([DEFERRED, FAILED, QUEUED]) | MESSAGES.c.id.in_(retried)))
                .values(state=QUEUED, due_at=now, updated_at=now, first_attempt_at=None, reason=None)
            ).rowcount
        return count, again

    def release_quota_deferred(self, sender_keys: builtins.list[str], now: float) -> int:
        """After a counter reset: messages deferred only for quota on these senders become due now."""
        cond = sa.or_(*[MESSAGES.c.candidates.contains(f'"{key}"', autoescape=True) for key in sender_keys])
        with self.store.write() as conn:
            return conn.execute(
                sa.update(MESSAGES)
                .where((MESSAGES.c.state == DEFERRED) & MESSAGES.c.reason.startswith("quota:") & cond)
                .values(due_at=now, updated_at=now)
            ).rowcount

    def cancel(self, now: float, *, msg_id: int | None = None, batch: str | None = None) -> CancelResult:
        """Cancel the selected messages not yet sent nor in flight; say, per state, which could not be and why."""
        target = self._select(msg_id, batch, False)
        when = sa.case(
            (MESSAGES.c.state == SENT, sa.func.coalesce(MESSAGES.c.sent_at, MESSAGES.c.updated_at)),
            (MESSAGES.c.state == SENDING, MESSAGES.c.lease_until),
            else_=MESSAGES.c.updated_at,
        )
        with self.store.write() as conn:
            # read what stays before the update, in the same transaction: the two agree
            rows = conn.execute(
                sa.select(MESSAGES.c.state, sa.func.count(), sa.func.max(when), sa.func.min(MESSAGES.c.id))
                .where(target & MESSAGES.c.state.in_([SENT, FAILED, CANCELLED, SENDING]))
                .group_by(MESSAGES.c.state)
            ).all()
            left = []
            for state, count, at, first_id in rows:
                reason = None
                if count == 1:
                    reason = conn.execute(sa.select(MESSAGES.c.reason).where(MESSAGES.c.id == first_id)).scalar()
                left.append(NotCancelled(str(state), int(count), at, int(first_id), reason))
            cancelled = conn.execute(
                sa.update(MESSAGES)
                .where(target & MESSAGES.c.state.in_([QUEUED, DEFERRED, STAGED]))
                .values(state=CANCELLED, updated_at=now, reason="cancelled by operator")
            ).rowcount
        order = [SENDING, SENT, FAILED, CANCELLED]
        return CancelResult(cancelled, sorted(left, key=lambda n: order.index(n.state)))

    def purge(self, before: float) -> int:
        """Delete sent messages (their MIME bodies) last changed before ``before``, and attachments no message
        references any more; the log keeps its rows."""
        return self._delete((MESSAGES.c.state == SENT) & (MESSAGES.c.updated_at < before))

    def backlog(self, now: float, *, run_id: str | None = None, batch: str | None = None) -> dict[str, Any]:
        """What is left (of one run or batch when given): messages due now (expired leases included),
        deferred to later with the next due time, and in flight under a live lease elsewhere; with
        ``batch``, also the batch's messages per state."""
        cond: Any = sa.true()
        if run_id is not None:
            cond = MESSAGES.c.run_id == run_id
        if batch is not None:
            cond = MESSAGES.c.batch == batch
        waiting = MESSAGES.c.state.in_(DUE_STATES)
        due = (waiting & (MESSAGES.c.due_at <= now)) | ((MESSAGES.c.state == SENDING) & (MESSAGES.c.lease_until < now))
        with self.store.read() as conn:
            due_now = conn.execute(sa.select(sa.func.count()).where(cond & due)).scalar_one()
            later, next_at = conn.execute(
                sa.select(sa.func.count(), sa.func.min(MESSAGES.c.due_at)).where(
                    cond & waiting & (MESSAGES.c.due_at > now)
                )
            ).one()
            in_flight = conn.execute(
                sa.select(sa.func.count()).where(cond & (MESSAGES.c.state == SENDING) & (MESSAGES.c.lease_until >= now))
            ).scalar_one()
            states = None
            if batch is not None:
                rows = conn.execute(
                    sa.select(MESSAGES.c.state, sa.func.count())
                    .where(cond & (MESSAGES.c.state != STAGED))
                    .group_by(MESSAGES.c.state)
                )
                states = {str(row[0]): int(row[1]) for row in rows}
        out: dict[str, Any] = {
            "due_now": due_now,
            "deferred": later,
            "next_due_at": next_at,
            "in_flight_elsewhere": in_flight,
        }
        if states is not None:
            out["batch"] = batch
            out["batch_states"] = states
        return out
