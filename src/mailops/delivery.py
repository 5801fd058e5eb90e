"""Delivering claimed messages: routing, quota reservation, SMTP, outcome, log.

One dispatcher (the calling thread) claims due messages, orders each one's
candidate senders and hands it to that sender's worker. Workers (one thread
per sender and connection, each with its own reused SMTP session) reserve
quota, pace, send, and record the outcome and the attempt in one
transaction. Sender problems (auth, TLS, connection, timeout) and exhausted
quotas send the message back to the dispatcher for the next candidate; a
recipient's permanent refusal does not; temporary failures are retried later
with backoff; a message no candidate may send now is deferred until it may.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.headerregistry import Address
from typing import Any

from . import health, hotsql, pgpipeline, quota, routing, suppress
from .compose import format_date, stamp_date
from .config import Config, Sender
from .errors import SecretError
from .groupcommit import GroupCommit
from .outbox import (
    INSERT_ATTEMPT,
    MARK_SENT,
    Bodies,
    ClaimReads,
    Outbox,
    QueuedMessage,
    retry_delay,
)
from .store import KeptConnection, Store
from .transport import SendResult, SmtpFailure, SmtpSession

CLAIM_SIZE = 50
#: skip reasons (routing.order) of senders that will not take the message later either
_FOR_GOOD_SKIPS = ("inactive", "no longer in senders.yaml")
#: a rate limit (per_minute, min_interval) that frees up within this many seconds is waited for, not deferred
MAX_PACING_WAIT = 65.0
#: how often the dispatcher re-reads sender health written by other processes
HEALTH_REFRESH = 5.0
#: a pacing wait longer than this closes the SMTP session first (servers drop idle clients after ~30-60 s)
IDLE_CLOSE_AFTER = 15.0


@dataclass
class DeliveryReport:
    """What a delivery run did, per sender, for the summary and the exit code."""

    sent: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)  # every recipient suppressed since it was queued
    next_due_at: float | None = None
    interrupted: bool = False
    returned: int = 0  # claimed but not attempted, put back in the queue (stop or deadline)
    problems: list[str] = field(default_factory=list)  # one line per deferral/failure reason (deduplicated)
    refused_recipients: int = 0  # recipients refused for good in messages the server accepted for others
    partially_refused: int = 0  # messages accepted for some recipients and refused for others
    internal_errors: int = 0  # messages whose delivery met an unexpected error (deferred or failed)
    tracebacks: list[str] = field(default_factory=list)  # of those errors, for --debug
    hidden_problems: int = 0  # problem lines left out (beyond the first 50)
    deadline_reached: bool = False  # --max-seconds stopped the run with work left (not an error)
    backlog: dict[str, Any] = field(default_factory=dict)  # what is left: Outbox.backlog()
    #: worth knowing, not a failure (exit code unchanged): a rotated OAuth2 refresh token that was not stored
    warnings: list[str] = field(default_factory=list)

    @property
    def total_sent(self) -> int:
        """Messages accepted by a server."""
        return sum(self.sent.values())

    @property
    def total_deferred(self) -> int:
        """Messages left waiting in the outbox."""
        return sum(self.deferred.values())

    @property
    def total_failed(self) -> int:
        """Messages that failed for good."""
        return sum(self.failed.values())

    @property
    def has_problems(self) -> bool:
        """True when something was not done: a deferral, a failure, a refused recipient (exit code 1)."""
        return bool(self.total_deferred or self.total_failed or self.refused_recipients or self.internal_errors)

    def note(self, text: str) -> None:
        """Remember a reason once."""
        if not text or text in self.problems:
            return
        if len(self.problems) < 50:
            self.problems.append(text)
        else:
            self.hidden_problems += 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        senders = sorted(set(self.sent) | set(self.deferred) | set(self.failed))
        return {
            "sent": self.total_sent,
            "deferred": self.total_deferred,
            "failed": self.total_failed,
            "cancelled_suppressed": sum(self.cancelled.values()),
            "refused_recipients": self.refused_recipients,
            "partially_refused_messages": self.partially_refused,
            "internal_errors": self.internal_errors,
            "returned_to_queue": self.returned,
            "next_due_at": self.next_due_at,
            "interrupted": self.interrupted,
            "deadline_reached": self.deadline_reached,
            "backlog": self.backlog,
            "per_sender": {
                s: {"sent": self.sent[s], "deferred": self.deferred[s], "failed": self.failed[s]} for s in senders
            },
            "problems": self.problems,
            "warnings": self.warnings,
        }


PasswordLookup = Callable[[Sender], str]


def _default_password(sender: Sender) -> str:
    from . import secrets

    return secrets.get_password(sender)


@dataclass
class _Job:
    """One claimed message on its way through the candidates."""

    msg: QueuedMessage
    turn: int | None = None  # round-robin turn taken for the whole claimed chunk
    order: list[Sender] | None = None
    skips: list[str] = field(default_factory=list)
    next_index: int = 0
    blocked: list[quota.Blocked] = field(default_factory=list)
    failures: list[tuple[Sender, SmtpFailure]] = field(default_factory=list)
    waits_for_skipped: bool = False


@dataclass
class _Result:
    """What a worker tells the dispatcher about a job."""

    job: _Job
    outcome: str  # sent | deferred | failed | next | returned
    sender: str | None = None
    note: str | None = None
    refused: int = 0  # recipients refused for good while others got the message
    trace: str | None = None  # traceback of an unexpected error (shown with --debug)


class _Batch:
    """The rows a group transaction's outcomes write with one statement each (a ``sent`` message's log row,
    its ``messages`` update, the senders seen healthy), collected while their outcomes are worked out."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []
        self.sent: list[tuple[QueuedMessage, str, float, dict[str, str]]] = []
        #: sender key -> (health.settings_of(sender), the SIZE its server announced)
        self.healthy: dict[str, tuple[str, int | None]] = {}


#: a message's outcome, worked out inside a write transaction: (connection, the group's batch) -> result
_Outcome = Callable[[Any, _Batch], _Result]


@dataclass
class _Write:
    """What a worker hands to the group transaction: reserve for ``upcoming`` and/or record ``outcome``.

    ``plain``: the outcome only adds rows to the group's batch (a message the server accepted for every
    recipient), no statement of its own, so it may be worked out before the group's first statement."""

    sender: Sender
    upcoming: _Job | None
    outcome: _Outcome | None
    plain: bool = False


_Ahead = quota.Reservation | quota.Blocked | None


class _GroupWrites:
    """Applies the writes of a group transaction (:class:`~mailops.groupcommit.GroupCommit`) in a fixed order.

    Quota rows first, by sender key (day before month, as :func:`quota.reserve` takes them), then the
    messages and the log, then ``sender_state`` by sender key: every transaction that takes rows of more
    than one kind takes them in this order, so on PostgreSQL two processes' groups never wait on each
    other in a cycle. The reservations of one sender in a group take each counter once for all of them
    (:func:`quota.reserve_many`); the sent messages' log rows and updates are one statement each.

    These hot statements run on the driver's cursor, compiled once (:mod:`mailops.hotsql`): on SQLite
    inside the ``BEGIN IMMEDIATE`` transaction SQLAlchemy opened, on PostgreSQL in pipeline mode
    (:mod:`mailops.pgpipeline`: one round trip for a group of plain outcomes). Everything rarer (a
    counter row to create, a blocked limit, a deferral, a sender's health) goes through SQLAlchemy on the
    same connection, in the same transaction and order.
    """

    def __init__(self, deliverer: Deliverer) -> None:
        self.d = deliverer

    def __call__(self, conn: Any, writes: list[_Write]) -> list[tuple[_Ahead, Any]]:
        if conn.dialect.name == "postgresql":
            if not pgpipeline.supported():
                return self._write(conn, writes, None)
            with pgpipeline.transaction(conn) as tx:
                if all(write.plain or write.outcome is None for write in writes):
                    done = self._one_trip(conn, writes, tx)
                    if done is not None:
                        return done
                return self._write(conn, writes, tx)
        return self._write(conn, writes, None)

    def _by_sender(self, writes: list[_Write]) -> dict[str, list[tuple[int, _Job]]]:
        """The writes that reserve ahead, by sender key (sorted: the order their quota rows are taken in)."""
        by_sender: dict[str, list[tuple[int, _Job]]] = {}
        for index, write in enumerate(writes):
            if write.upcoming is not None:
                by_sender.setdefault(write.sender.key, []).append((index, write.upcoming))
        return {key: by_sender[key] for key in sorted(by_sender)}

    @staticmethod
    def _counts(group: list[tuple[int, _Job]]) -> list[int]:
        return [len(job.msg.pending_recipients) for _, job in group]

    @staticmethod
    def _batches(conn: Any, batch: _Batch) -> list[tuple[str, list[dict[str, Any]]]]:
        """The batch's log rows (grouped by the columns they give: one INSERT each) and sent messages' updates
        as driver statements, in that order."""
        logs: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for row in batch.attempts:
            logs.setdefault(tuple(row), []).append(row)
        out = [hotsql.rows(conn, INSERT_ATTEMPT, rows, keys) for keys, rows in logs.items()]
        if batch.sent:
            out.append(hotsql.rows(conn, MARK_SENT, Outbox.sent_params(batch.sent)))
        return out

    def _one_trip(self, conn: Any, writes: list[_Write], tx: pgpipeline.Pipelined) -> list[tuple[_Ahead, Any]] | None:
        """PostgreSQL, every outcome plain: ``BEGIN``, each sender's all-or-nothing reservation, the log rows,
        the sent updates and ``COMMIT`` in one round trip (a group of one message: one statement). A sender
        whose reservation does not fit gets none (its worker reserves on its next turn). None (nothing done)
        when a sender cannot reserve in one statement (paced): the group then takes the usual path."""
        d = self.d
        now = d.clock()
        takes = []
        for group in self._by_sender(writes).values():
            take = quota.take_all(writes[group[0][0]].sender, d.config.timezone, now, self._counts(group))
            if take is None:
                return None
            takes.append((group, take))
        # Plain outcomes run no statement: worked out first, they are written after the quota rows anyway.
        batch = _Batch()
        results = [write.outcome(conn, batch) if write.outcome is not None else None for write in writes]
        statements = [(take[0], take[1]) for _, take in takes]
        # A sender's first success in a run also records its health (statements of their own): then the
        # transaction stays open for them and commits after (once per sender and run).
        batches = self._batches(conn, batch)
        single = None if batch.healthy else pgpipeline.one_statement(statements, batches)
        if single is not None:
            returned = tx.single(*single)  # a group of one message: one statement
        else:
            returned = [len(rows) for rows in tx.run(statements, batches, commit=not batch.healthy)]
        if batch.healthy:
            self._record_healthy(conn, batch, now)
            tx.commit()
        ahead: dict[int, _Ahead] = {}
        for (group, take), count in zip(takes, returned, strict=True):
            if count == take[2]:
                for (index, _), one in zip(group, take[3], strict=True):
                    ahead[index] = one
        return [(ahead.get(index), result) for index, result in enumerate(results)]

    def _write(self, conn: Any, writes: list[_Write], tx: pgpipeline.Pipelined | None) -> list[tuple[_Ahead, Any]]:
        d = self.d
        now = d.clock()
        tz = d.config.timezone
        raw = tx is None and conn.dialect.name == "sqlite"
        ahead: dict[int, _Ahead] = {}
        by_sender = self._by_sender(writes)
        taken: dict[str, list[quota.Reservation]] = {}
        if tx is not None:
            # BEGIN and one all-or-nothing statement per sender, in one round trip.
            takes = {
                key: quota.take_all(writes[group[0][0]].sender, tz, now, self._counts(group))
                for key, group in by_sender.items()
            }
            fast = [key for key in by_sender if takes[key] is not None]
            replies = tx.begin([(t[0], t[1]) for key in fast if (t := takes[key]) is not None])
            for key, rows in zip(fast, replies, strict=True):
                take = takes[key]
                if take is not None and len(rows) == take[2]:
                    taken[key] = take[3]
        for key, group in by_sender.items():
            sender = writes[group[0][0]].sender
            counts = self._counts(group)
            held: list[quota.Reservation] | list[quota.Reservation | quota.Blocked] | None = taken.get(key)
            if held is None and raw:
                held = quota.take_on_cursor(conn, sender, tz, now, counts)
            if held is None:
                # Blocked, or a counter row to create: reserved in turn (nothing was taken above).
                held = quota.reserve_many(conn, sender, tz, now, counts)
            for (index, _), one in zip(group, held, strict=True):
                ahead[index] = one
        batch = _Batch()
        results = [write.outcome(conn, batch) if write.outcome is not None else None for write in writes]
        if tx is not None:
            tx.finish(self._batches(conn, batch), commit=not batch.healthy)
        elif raw:
            if batch.attempts or batch.sent:
                hotsql.execute_many(conn, self._batches(conn, batch))
        else:
            if batch.attempts:
                d.outbox.log(conn, batch.attempts)
            if batch.sent:
                d.outbox.mark_sent_many(conn, batch.sent)
        self._record_healthy(conn, batch, now)
        if tx is not None and batch.healthy:
            tx.commit()
        return [(ahead.get(index), result) for index, result in enumerate(results)]

    @staticmethod
    def _record_healthy(conn: Any, batch: _Batch, now: float) -> None:
        for key in sorted(batch.healthy):
            settings, max_size = batch.healthy[key]
            health.record(conn, key, True, now, settings=settings, max_size=max_size)


class _Worker(threading.Thread):
    """Sends jobs for one sender over one reused SMTP session.

    Bookkeeping is pipelined with the SMTP traffic: while the server answers
    a message's commands (with PIPELINING; else while its data is on its way),
    the worker writes the previous message's outcome
    and reserves quota for the next queued message, in one write that goes
    into the run's next group transaction (:class:`_GroupWrites`) with what
    the other workers have ready. The worker waits until that write is
    committed before it sends the message's end of data, so the server never
    holds two accepted messages of one worker that the database has not
    recorded: a crash sends at most one message per worker twice. Every job
    still gets exactly one result, sent to the dispatcher once its outcome is
    committed.
    """

    def __init__(
        self, deliverer: Deliverer, sender: Sender, password: str | None, jobs: queue.Queue[_Job | None]
    ) -> None:
        super().__init__(name=f"mailops-{sender.key}", daemon=True)
        self.d = deliverer
        self.sender = sender
        self.jobs = jobs
        self.session = SmtpSession(sender, password, max_per_connection=sender.max_per_connection)
        # The job taken from the queue while the previous outcome was written, and the quota
        # reserved for it in that same transaction (None: reserve as usual).
        self.next_job: tuple[_Job | None, quota.Reservation | None] | None = None
        # The last message's outcome, not written yet: it goes into the next write transaction.
        # Only ever held while next_job has its reservation, so it never waits through pacing.
        # Its flag: a plain outcome (rows for the group's batch only, see _Write).
        self.pending: tuple[_Job, _Outcome, bool] | None = None
        # Pacing limits count from the reservation; reserving ahead would start the clock early.
        self.reserves_ahead = sender.per_minute is None and sender.min_interval <= 0

    def take_next(self) -> _Job | None:
        """The next queued job if one is waiting (kept for the next turn of the loop), else None."""
        try:
            job = self.jobs.get_nowait()
        except queue.Empty:
            return None
        self.next_job = (job, None)
        return job

    def holds_next(self) -> bool:
        """True when the next job is taken and its quota reserved (so an outcome may wait for its write)."""
        return self.next_job is not None and self.next_job[1] is not None and not self.d.stopping()

    def _next_to_reserve(self) -> _Job | None:
        """The next job (taken from the queue if none is held) when its quota should be reserved ahead now."""
        if not self.reserves_ahead or self.d.stopping():
            return None
        if self.next_job is None and self.take_next() is None:
            return None
        assert self.next_job is not None
        job, held = self.next_job
        return job if held is None else None  # job None: the stop sentinel

    def flush(self) -> None:
        """Write the pending outcome and reserve ahead, in the next group transaction (with what the other
        workers have ready); hand the result to the dispatcher once committed."""
        pending, self.pending = self.pending, None
        upcoming = self._next_to_reserve()
        if pending is None and upcoming is None:
            return  # nothing to write
        if pending is None:
            write = _Write(self.sender, upcoming, None)
        else:
            write = _Write(self.sender, upcoming, pending[1], plain=pending[2])
        try:
            ahead, result = self.d.writer.commit(write)
        except BaseException as exc:
            if pending is not None:  # sent but not recorded: back to the queue (at-least-once)
                self.d.results.put(_Result(pending[0], "returned", note=f"could not record an outcome: {exc}"))
            raise
        # Only a committed reservation counts; a blocked one leaves the next turn to reserve (and pace) as usual.
        if upcoming is not None and isinstance(ahead, quota.Reservation):
            self.next_job = (upcoming, ahead)
        if result is not None:
            self.d.results.put(result)

    def flush_quietly(self) -> None:
        """:meth:`flush` while a message is with the server: a failure must not abort that message's
        transaction (the pending job was handed back already; the next write meets the problem again)."""
        with contextlib.suppress(Exception):  # reported through the returned job's note
            self.flush()

    def run(self) -> None:
        try:
            while True:
                if self.next_job is not None:
                    job, held = self.next_job
                    self.next_job = None
                else:
                    job, held = self.jobs.get(), None
                if job is None:
                    return
                if self.d.stopping():
                    self.flush_quietly()  # a failure hands the pending job back; this one goes back below
                    self._give_back(job, held)
                    continue
                try:
                    result = self.d._attempt(job, self, held)
                except Exception as exc:  # noqa: BLE001 - a bug must neither strand the dispatcher nor loop the message
                    result = self.d._record_internal_error(job, self.sender, exc)
                except BaseException as exc:  # noqa: BLE001 - not a bug of one message: the lease brings it back
                    result = _Result(job, "returned", note=f"internal error: {exc!r}")
                if result is not None:
                    self.d.results.put(result)
        finally:
            self.flush_quietly()
            if self.next_job is not None:  # stop or internal error: hand it back, give its quota back
                job, held = self.next_job
                self.next_job = None
                if job is not None:
                    self._give_back(job, held)
            self.session.close()

    def _give_back(self, job: _Job, held: quota.Reservation | None) -> None:
        """Return an unsent job to the dispatcher and its reservation to the quota."""
        try:
            if held is not None:
                self.d._release(held)
        except Exception:  # noqa: BLE001 - the database is failing: the count errs on the safe side
            pass
        finally:
            self.d.results.put(_Result(job, "returned"))


class _LeaseKeeper(threading.Thread):
    """Renews the lease of every message a run holds, every third of the lease, until the run ends.

    A message is held from its claim until its outcome is written, however
    long its SMTP transaction takes (a 20 MB attachment on a slow link), so
    the lease only has to outlast a stall of the whole process, not a send.
    Its own thread, so that nothing the dispatcher waits for delays a renewal.
    """

    RETRY_AFTER_ERROR = 1.0  # seconds; a renewal that failed (database busy or gone) is tried again soon
    MIN_INTERVAL = 0.05  # seconds; only a test's lowered lease floor comes near it

    def __init__(self, deliverer: Deliverer) -> None:
        super().__init__(name="mailops-lease", daemon=True)
        self.d = deliverer
        self._lock = threading.Lock()
        self._held: set[int] = set()
        self._done = threading.Event()

    def hold(self, ids: list[int]) -> None:
        """Keep renewing these claims."""
        with self._lock:
            self._held.update(ids)

    def drop(self, msg_id: int) -> None:
        """The claim is settled (or handed back): stop renewing it."""
        with self._lock:
            self._held.discard(msg_id)

    def stop(self) -> None:
        """End the thread (after any renewal under way)."""
        self._done.set()
        if self.is_alive():
            self.join()

    def run(self) -> None:
        interval = max(self.d.config.delivery.lease / 3, self.MIN_INTERVAL)
        wait = interval
        while not self._done.wait(wait):
            with self._lock:
                ids = sorted(self._held)
            wait = interval
            if not ids:
                continue
            try:
                self.d.outbox.renew(self.d.worker_id, ids, self.d.clock())
            except Exception:  # noqa: BLE001 - the lease still runs; try again soon rather than end the thread
                wait = min(interval, self.RETRY_AFTER_ERROR)


class Deliverer:
    """Claims due messages and sends them with one worker per sender connection."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        password_lookup: PasswordLookup = _default_password,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.outbox = Outbox(store, config.delivery)
        self.bodies = Bodies(self.outbox)  # stored attachments, read once and shared by the workers
        self.worker_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.stop_event = threading.Event()
        # Waiting on the stop event lets Ctrl-C / SIGTERM cut a pacing wait short.
        self.sleep = sleep or self.stop_event.wait
        self.results: queue.Queue[_Result] = queue.Queue()
        self._password_lookup = password_lookup
        self._passwords: dict[str, str | None] = {}
        self._password_errors: dict[str, str] = {}
        self._queues: dict[str, queue.Queue[_Job | None]] = {}
        self._workers: list[_Worker] = []
        self._healths: dict[str, health.Health] = {}
        self._healths_at = 0.0
        self._exhausted: dict[str, quota.Blocked] = {}  # day/month quota reached: skip until it rolls over
        self._known_healthy: set[str] = set()
        self._sender_addresses: dict[str, tuple[Address, list[Address] | None]] = {}
        self._date_cache: tuple[int, str] = (-1, "")  # (second, Date value); workers share it (a tuple swap is atomic)
        self._deadline: float | None = None
        self._leases = _LeaseKeeper(self)  # replaced by a running one for each run()
        # The workers' outcomes and reservations ahead, committed together (group commit).
        self.writer: GroupCommit[_Write, tuple[quota.Reservation | quota.Blocked | None, _Result | None]] = GroupCommit(
            store, _GroupWrites(self)
        )

    # ------------------------------------------------------------ dispatcher

    def stopping(self) -> bool:
        """True once a stop was requested or the deadline passed: no new attempts start."""
        return self.stop_event.is_set() or (self._deadline is not None and self.clock() >= self._deadline)

    def run(
        self,
        *,
        run_id: str | None = None,
        batch: str | None = None,
        limit: int | None = None,
        max_seconds: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> DeliveryReport:
        """Deliver due messages (of one ``run_id`` or ``batch`` when given) until none is due, ``limit`` or
        the deadline; the report ends with what is left (:meth:`Outbox.backlog`)."""
        report = DeliveryReport()
        # Workers mostly wait on sockets; a short GIL switch interval lets a thread whose reply
        # has arrived run at once instead of waiting up to 5 ms behind a busy sibling.
        sys.setswitchinterval(0.0005)
        self._deadline = self.clock() + max_seconds if max_seconds is not None else None
        claimed_total = 0
        in_flight: dict[int, _Job] = {}
        # Enough claimed that every worker finds its next job queued (and can reserve for it ahead).
        connections = sum(s.connections for s in self.config.senders.values() if s.active)
        max_in_flight = max(CLAIM_SIZE, 6 * connections)
        exhausted_claims = False
        self._leases = _LeaseKeeper(self)
        self._leases.start()
        claims = KeptConnection(self.store)  # the dispatcher's claims on a connection of their own
        try:
            while True:
                try:
                    can_claim = not exhausted_claims and not self.stopping()
                    if can_claim and len(in_flight) < max_in_flight // 2 and (limit is None or claimed_total < limit):
                        want = max_in_flight - len(in_flight)
                        if limit is not None:
                            want = min(want, limit - claimed_total)
                        # the turns and the suppression entries come with the claim (one transaction)
                        reads = ClaimReads(turns=self._turns_wanted)
                        claimed = self.outbox.claim(
                            self.worker_id, self.clock(), want, run_id, batch, reads=reads, kept=claims
                        )
                        jobs = [_Job(msg) for msg in claimed]
                        self._take_turns(jobs, reads.first_turns)
                        self._leave_out_suppressed(jobs, reads.listed)
                        self._leases.hold([job.msg.id for job in jobs])
                        if len(jobs) < want:
                            exhausted_claims = True
                        claimed_total += len(jobs)
                        for job in jobs:
                            in_flight[job.msg.id] = job
                            self._dispatch(job, report, in_flight, progress)
                    if not in_flight:
                        if exhausted_claims or self.stopping() or (limit is not None and claimed_total >= limit):
                            break
                        continue
                    try:
                        result = self.results.get(timeout=0.2)
                    except queue.Empty:
                        result = None
                    if result is not None:
                        self._handle(result, report, in_flight, progress)
                except KeyboardInterrupt:
                    if self.stop_event.is_set():
                        raise  # second Ctrl-C: leave now; leases bring the rest back
                    self.stop_event.set()
                    report.interrupted = True
        finally:
            try:
                self._shutdown()
            finally:
                claims.close()
                self._leases.stop()  # after the workers: a message still with a server stays renewed
                self.writer.close()
        if self.stop_event.is_set():
            report.interrupted = True
        report.warnings = health.record_token_news(self.store)
        report.backlog = self.outbox.backlog(self.clock(), run_id=run_id, batch=batch)
        report.next_due_at = report.backlog["next_due_at"]
        if (
            not self.stop_event.is_set()
            and self._deadline is not None
            and self.clock() >= self._deadline
            and (report.returned or report.backlog["due_now"])
        ):
            # --max-seconds with work left: the next run goes on; not an error
            report.interrupted = report.deadline_reached = True
        return report

    def _shutdown(self) -> None:
        for jobs in self._queues.values():
            for _ in range(64):
                jobs.put(None)
        for worker in self._workers:
            worker.join(timeout=max(worker.sender.timeout * 2, 5))
        self._workers.clear()
        self._queues.clear()

    def _handle(self, result: _Result, report: DeliveryReport, in_flight: dict[int, _Job], progress: Any) -> None:
        job = result.job
        if result.note:
            for line in result.note.split("\n"):
                report.note(line)
        if result.trace is not None:
            report.internal_errors += 1
            if len(report.tracebacks) < 5:
                report.tracebacks.append(result.trace)
        if result.refused:
            report.refused_recipients += result.refused
            report.partially_refused += 1
        if result.outcome == "next":
            self._dispatch(job, report, in_flight, progress)
            return
        in_flight.pop(job.msg.id, None)
        self._leases.drop(job.msg.id)
        if result.outcome == "returned":
            self.outbox.unclaim(self.worker_id, [job.msg.id], self.clock())
            report.returned += 1
            return
        getattr(report, result.outcome)[result.sender or "-"] += 1
        if progress:
            progress(result.outcome)

    def _refresh_health(self) -> None:
        now = self.clock()
        if now - self._healths_at >= HEALTH_REFRESH:
            with self.store.read() as conn:
                self._healths = health.load(conn)
            self._healths_at = now

    def _password(self, sender: Sender) -> str | None:
        if not sender.auth:
            return None
        if sender.key not in self._passwords and sender.key not in self._password_errors:
            try:
                self._passwords[sender.key] = self._password_lookup(sender)
            except SecretError as exc:
                self._password_errors[sender.key] = str(exc)
        return self._passwords.get(sender.key)

    def _has_password(self, keys: list[str]) -> dict[str, bool | str]:
        """Per active candidate: True when it can log in, else why not (the lookup's error, with its fix)."""
        out: dict[str, bool | str] = {}
        for key in keys:
            sender = self.config.senders.get(key)
            if sender is not None and sender.active:
                if (not sender.auth) or self._password(sender) is not None:
                    out[key] = True
                else:
                    out[key] = self._password_errors.get(key, False) or False
        return out

    def _strategy(self, msg: QueuedMessage) -> str:
        route = self.config.routes.get(msg.route or "")
        return route.strategy if route else msg.strategy

    def _turn_keys(self, messages: list[QueuedMessage]) -> list[str | None]:
        """Per message: the shared counter it takes its round-robin turn from, or None (not round-robin)."""
        return [
            routing.turn_key(msg.route, msg.candidates)
            if len(msg.candidates) > 1 and self._strategy(msg) == "round-robin"
            else None
            for msg in messages
        ]

    def _turns_wanted(self, messages: list[QueuedMessage]) -> dict[str, int]:
        """How many turns a claimed chunk takes of each round-robin counter (taken in the claim's transaction)."""
        return dict(Counter(key for key in self._turn_keys(messages) if key is not None))

    def _take_turns(self, jobs: list[_Job], first_turns: dict[str, int]) -> None:
        """Give every round-robin job of a claimed chunk its turn: consecutive from the first one taken, in
        claim order."""
        if not first_turns:
            return
        following = dict(first_turns)
        for job, key in zip(jobs, self._turn_keys([job.msg for job in jobs]), strict=True):
            if key is not None:
                job.turn = following[key]
                following[key] += 1

    def _leave_out_suppressed(self, jobs: list[_Job], listed: dict[str, str]) -> None:
        """Leave out recipients put on the suppression list since their message was queued (``listed``: the
        entries read with the claim), each with a ``skipped`` log row; not for messages queued with
        --include-suppressed. The log rows go in a transaction of their own, before any of these messages
        is handed to a worker."""
        if not listed:
            return
        rows = []
        for job in jobs:
            msg = job.msg
            if msg.include_suppressed:
                continue
            for rcpt in msg.pending_recipients:
                reason = listed.get(suppress.key(rcpt))
                if reason is not None:
                    msg.recipient_status[rcpt] = f"suppressed: {reason}"
                    detail = f"on the suppression list since the message was queued: {reason}"
                    rows.append(self._attempt_row(msg, None, "skipped", recipients=rcpt, detail=detail))
        if rows:
            with self.store.write() as conn:
                self.outbox.log(conn, rows)

    def _order(self, job: _Job) -> None:
        msg = job.msg
        self._refresh_health()
        strategy = self._strategy(msg)
        args = (
            self.config,
            msg.route,
            msg.candidates,
            strategy,
            self.clock(),
            self._healths,
            self._has_password(msg.candidates),
        )
        if strategy == "least-used" and len(msg.candidates) > 1:
            with self.store.write() as conn:  # current usage, read under the write lock
                order, skips = routing.order(conn, *args)
        else:
            order, skips = routing.order(None, *args, turn=job.turn)
        job.order = order
        job.skips = [f"skipped {s.sender}: {s.reason}" for s in skips]
        # a skipped sender that may work later (unhealthy, no password yet) keeps the message waiting
        job.waits_for_skipped = any(not s.reason.startswith(_FOR_GOOD_SKIPS) for s in skips)

    def _dispatch(self, job: _Job, report: DeliveryReport, in_flight: dict[int, _Job], progress: Any) -> None:
        """Hand the job to its next usable candidate's worker, or settle it when none is left."""
        if not job.msg.pending_recipients:
            self._handle(self._settle_without_recipients(job), report, in_flight, progress)
            return
        if job.order is None:
            self._order(job)
        assert job.order is not None
        now = self.clock()
        while job.next_index < len(job.order):
            sender = job.order[job.next_index]
            job.next_index += 1
            blocked = self._exhausted.get(sender.key)
            if blocked is not None and blocked.until > now:
                job.blocked.append(blocked)
                continue
            self._queue_for(sender).put(job)
            return
        if self.stopping() and not job.failures and not job.blocked:
            self._handle(_Result(job, "returned"), report, in_flight, progress)
            return
        outcome, sender_key, note = self._settle(job)
        self._handle(_Result(job, outcome, sender_key, note), report, in_flight, progress)

    def _queue_for(self, sender: Sender) -> queue.Queue[_Job | None]:
        jobs = self._queues.get(sender.key)
        if jobs is None:
            jobs = queue.Queue()
            self._queues[sender.key] = jobs
            password = self._password(sender)
            for _ in range(sender.connections):
                worker = _Worker(self, sender, password, jobs)
                self._workers.append(worker)
                worker.start()
        return jobs

    # ------------------------------------------------------------ worker side

    def _attempt_row(self, msg: QueuedMessage, sender: Sender | None, outcome: str, **extra: Any) -> dict[str, Any]:
        row = {
            "at": self.clock(),
            "message_pk": msg.id,
            "batch": msg.batch,
            "route": msg.route,
            "sender": sender.key if sender else None,
            "from_addr": sender.email if sender else None,
            "recipients": ", ".join(msg.pending_recipients or msg.recipients),
            "subject": msg.subject,
            "template": msg.template,
            "message_id": msg.message_id,
            "smtp_code": None,
            "smtp_text": None,
            "outcome": outcome,
            "detail": None,
            "duration": None,
        }
        row.update(extra)
        return row

    def _mime_for(self, msg: QueuedMessage, sender: Sender) -> bytes:
        """The bytes handed to ``sender``'s server: the stored message, Date stamped now (and From rewritten
        on failover); the stored message itself is not changed. A piped message's own Date is kept."""
        whole = self.bodies.whole(msg)
        mime = whole if msg.keep_date else stamp_date(whole, self._date_value())
        if sender.key == msg.nominal_sender:
            return mime
        from .compose import rewrite_sender

        from_addr, reply_to = self._addresses_of(sender)
        return rewrite_sender(mime, from_addr=from_addr, reply_to=reply_to, envelope_from=sender.email)

    def _envelope_from(self, msg: QueuedMessage, sender: Sender) -> str:
        """MAIL FROM: the sender's own address; through a relay that does not log in (``auth: false``), the
        envelope sender a piped message asked for (``sendmail -f``), which gateway stored only for such a relay."""
        if sender.auth or sender.key != msg.nominal_sender:
            return sender.email
        return msg.envelope_from

    def _date_value(self) -> str:
        """The Date header value for now, in the configured time zone (formatted once per second)."""
        second = int(self.clock())
        cached = self._date_cache
        if cached[0] != second:
            cached = self._date_cache = (second, format_date(datetime.fromtimestamp(second, self.config.timezone)))
        return cached[1]

    def _addresses_of(self, sender: Sender) -> tuple[Address, list[Address] | None]:
        """A sender's From and Reply-To as Address objects, built once (parsing them costs per message)."""
        found = self._sender_addresses.get(sender.key)
        if found is None:
            from .compose import make_address, parse_address

            reply_to = None
            if sender.reply_to:
                reply_to = [parse_address(sender.reply_to, where=f"senders.{sender.key}.reply_to")]
            found = self._sender_addresses[sender.key] = (
                make_address(sender.display_name or "", sender.email),
                reply_to,
            )
        return found

    def _reserve(self, job: _Job, sender: Sender, session: SmtpSession) -> quota.Reservation | quota.Blocked | None:
        """Reserve quota, sleeping through short pacing waits; None when stopped while waiting."""
        for _ in range(1000):  # bounded: each pass either reserves, blocks for long, or waits for pacing
            with self.store.write() as conn:
                held = quota.reserve(conn, sender, self.config.timezone, self.clock(), len(job.msg.pending_recipients))
            if isinstance(held, quota.Reservation):
                return held
            wait = held.until - self.clock()
            short = held.kind in ("minute", "interval") and wait <= MAX_PACING_WAIT
            fits = self._deadline is None or self.clock() + wait < self._deadline
            if short and self.stop_event.is_set():
                return None  # stopping (Ctrl-C, SIGTERM): back to the queue as it was, not deferred for pacing
            if not (short and fits):
                return held
            if wait > IDLE_CLOSE_AFTER:
                session.close()  # reopened on the next send rather than failing on a connection the server dropped
            self.sleep(max(wait, 0.0))
            if self.stopping():
                return None
        return None

    def _release(self, held: quota.Reservation) -> None:
        with self.store.write() as conn:
            quota.release(conn, held)

    def _attempt(self, job: _Job, worker: _Worker, reserved: quota.Reservation | None) -> _Result | None:
        """Reserve (unless ``reserved``), send and record one job on the worker's sender (in its thread).

        A success is not written here: it becomes the worker's pending outcome,
        written while the next message is under way (before its end of data) when that one already
        holds its quota, else at once; its result reaches the dispatcher from
        :meth:`_Worker.flush`, and None is returned.
        """
        msg, sender, session = job.msg, worker.sender, worker.session
        if reserved is None:
            worker.flush()  # never hold an outcome through a reservation, which may wait for pacing
        held = reserved if reserved is not None else self._reserve(job, sender, session)
        if held is None:
            return _Result(job, "returned")
        if isinstance(held, quota.Blocked):
            job.blocked.append(held)
            # A recipient-counted limit that cannot take this message may still take a smaller one.
            if held.kind in ("day", "month") and quota.units(sender, len(msg.pending_recipients), held.kind) == 1:
                self._exhausted[sender.key] = held
            return _Result(job, "next")
        started = time.monotonic()
        try:
            mime = self._mime_for(msg, sender)
            envelope_from = self._envelope_from(msg, sender)
            result = session.send(mime, envelope_from, msg.pending_recipients, while_waiting=worker.flush_quietly)
        except SmtpFailure as failure:
            worker.flush()
            return self._record_failure(job, sender, held, failure, time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - a bug: this message waits with backoff, the run goes on
            session.close()  # its state is unknown: the next message starts on a fresh connection
            worker.flush()
            return self._record_internal_error(job, sender, exc, held)
        worker.pending = (
            job,
            functools.partial(self._record_sent, job, sender, result, time.monotonic() - started, self.clock()),
            not result.refused,  # _record_sent then only adds rows to the group's batch
        )
        if not worker.holds_next():
            worker.flush_quietly()  # a failure hands this job back with its note
        return None

    def _record_sent(
        self, job: _Job, sender: Sender, result: SendResult, duration: float, now: float, conn: Any, batch: _Batch
    ) -> _Result:
        """Write a server's acceptance (some recipients may have been refused) and the attempt's log rows
        (those of a plain success go into ``batch``, written with the group's other ones).

        A recipient refused for good while others got the message is a failure of that
        recipient: its own ``failed`` log row with the server's reply, and a problem line.
        """
        msg = job.msg
        status = dict(msg.recipient_status)
        for rcpt in result.accepted:
            status[rcpt] = "sent"
        temp_refused = 0
        rows = []
        problems = []
        for rcpt, (code, text) in result.refused.items():
            if 500 <= code < 600:
                status[rcpt] = f"failed: {code} {text}"
                self._suppress_if_nonexistent(conn, rcpt, code, text, now)
                problems.append(f"{msg.subject!r}: {rcpt} refused: {code} {text}; the other recipients got the message")
                rows.append(
                    self._attempt_row(
                        msg,
                        sender,
                        "failed",
                        at=now,
                        recipients=rcpt,
                        smtp_code=code,
                        smtp_text=text,
                        detail="recipient refused at RCPT; the other recipients got the message",
                    )
                )
            else:
                temp_refused += 1
        refused_note = "; ".join(f"{r}: {c} {t}" for r, (c, t) in result.refused.items()) or None
        note = "\n".join(problems) or None
        batch.attempts.append(
            self._attempt_row(
                msg,
                sender,
                "partial" if result.refused else "sent",
                at=now,
                smtp_code=result.code,
                smtp_text=result.text,
                detail=refused_note,
                duration=duration,
            )
        )
        batch.attempts.extend(rows)
        if temp_refused:
            # Accepted ones are done; only the temporarily refused recipients wait for a retry.
            outcome, deferral = self._defer_temporary(
                conn, msg, sender, f"{temp_refused} recipient(s) temporarily refused: {refused_note}", now, status
            )
            note = "\n".join([*problems, deferral])
        else:
            batch.sent.append((msg, sender.key, now, status))
            outcome = "sent"
        if sender.key not in self._known_healthy:  # one health write per run and sender
            batch.healthy[sender.key] = (health.settings_of(sender), result.server_max_size)
            self._known_healthy.add(sender.key)
        return _Result(job, outcome, sender.key, note, refused=len(problems))

    @staticmethod
    def _suppress_if_nonexistent(conn: Any, rcpt: str, code: int, text: str, now: float) -> None:
        """Put a recipient refused for good as nonexistent (5.1.1 user unknown...) on the suppression list,
        in the transaction that records the refusal: the next send leaves it out."""
        if suppress.is_nonexistent_recipient(code, text):
            suppress.add(conn, [rcpt], reason=f"{code} {text}", source="bounce", now=now)

    def _record_internal_error(
        self, job: _Job, sender: Sender | None, exc: Exception, held: quota.Reservation | None = None
    ) -> _Result:
        """An unexpected error while delivering one message: that message waits with backoff (and fails
        after the give-up age) with the error as its reason; the run goes on."""
        import traceback

        msg = job.msg
        trace = "".join(traceback.format_exception(exc))
        text = f"internal error: {exc!r}"
        now = self.clock()
        try:
            with self.store.write() as conn:
                if held is not None:
                    quota.release(conn, held)
                self.outbox.log(conn, self._attempt_row(msg, sender, "deferred", detail=text))
                outcome, note = self._defer_temporary(conn, msg, sender, text, now, None)
        except Exception as again:  # noqa: BLE001 - the database fails too: the message goes back to the queue
            return _Result(job, "returned", note=f"{text}; could not record it: {again}", trace=trace)
        where = f" via {sender.key}" if sender else ""
        return _Result(job, outcome, sender.key if sender else None, f"{msg.subject!r}{where}: {note}", trace=trace)

    def _record_failure(
        self, job: _Job, sender: Sender, held: quota.Reservation, failure: SmtpFailure, duration: float
    ) -> _Result:
        msg = job.msg
        now = self.clock()
        text = f"{failure.step}: {failure.code or ''} {failure.text}".replace("  ", " ")
        with self.store.write() as conn:
            quota.release(conn, held)
            if failure.sender_problem:
                if failure.code != 552:  # message too large (SIZE at MAIL FROM) says nothing of the sender's health
                    settings = health.settings_of(sender)
                    health.record(conn, sender.key, False, now, text, settings)
                    self._known_healthy.discard(sender.key)
                    self._healths[sender.key] = health.Health(False, now, text, settings, now)
                self.outbox.log(
                    conn,
                    self._attempt_row(
                        msg,
                        sender,
                        "failed",
                        smtp_code=failure.code,
                        smtp_text=failure.text,
                        detail=f"{failure.kind} at {failure.step}; trying the next sender",
                        duration=duration,
                    ),
                )
                job.failures.append((sender, failure))
                return _Result(job, "next", note=f"{sender.key}: {failure.kind}: {failure.text}")
            status = dict(msg.recipient_status)
            if failure.refused:
                for rcpt, (code, rtext) in failure.refused.items():
                    if 500 <= code < 600:
                        status[rcpt] = f"failed: {code} {rtext}"
                        self._suppress_if_nonexistent(conn, rcpt, code, rtext, now)
            permanent = not failure.temporary and not (
                failure.refused and any(code < 500 for code, _ in failure.refused.values())
            )
            self.outbox.log(
                conn,
                self._attempt_row(
                    msg,
                    sender,
                    "failed" if permanent else "deferred",
                    smtp_code=failure.code,
                    smtp_text=failure.text,
                    detail=f"{'permanent' if permanent else 'temporary'} failure at {failure.step}",
                    duration=duration,
                ),
            )
            if not permanent:
                outcome, note = self._defer_temporary(conn, msg, sender, text, now, status)
                return _Result(job, outcome, sender.key, note)
            # Permanent: the recipients (or the message) are refused; another sender would not help.
            for rcpt in msg.pending_recipients:
                status.setdefault(rcpt, f"failed: {failure.code} {failure.text}")
            self.outbox.mark_failed(conn, msg, text, now, attempted=True, sender=sender.key, recipient_status=status)
        return _Result(
            job,
            "failed",
            sender.key,
            f"failed: {msg.subject!r} to {', '.join(msg.pending_recipients)}: {text} "
            f"(message {msg.id}; 'mailops queue retry {msg.id}' tries again)",
        )

    def _defer_temporary(
        self,
        conn: Any,
        msg: QueuedMessage,
        sender: Sender | None,
        reason: str,
        now: float,
        status: dict[str, str] | None,
    ) -> tuple[str, str]:
        """Defer with backoff, or fail once the give-up age has passed; returns (outcome, note)."""
        policy = self.config.delivery
        failures = msg.attempts + 1
        first = msg.first_attempt_at or now
        key = sender.key if sender else None
        if now - first >= policy.give_up_after:
            final = f"gave up after {failures} attempts over {(now - first) / 3600:.1f} h: {reason}"
            self.outbox.mark_failed(conn, msg, final, now, attempted=True, sender=key, recipient_status=status)
            self.outbox.log(conn, self._attempt_row(msg, sender, "failed", detail=final))
            return "failed", final
        until = now + retry_delay(failures, policy)
        self.outbox.mark_deferred(
            conn, msg, until, f"temporary failure: {reason}", now, attempted=True, sender=key, recipient_status=status
        )
        return "deferred", f"temporary failure: {reason}"

    # ------------------------------------------------------------ no candidate left (dispatcher side)

    def _settle_without_recipients(self, job: _Job) -> _Result:
        """A message whose every recipient already has an outcome (never an empty envelope to a server)."""
        msg = job.msg
        now = self.clock()
        refused = {r: s for r, s in msg.recipient_status.items() if s != "sent" and not s.startswith("suppressed:")}
        with self.store.write() as conn:
            if not refused and "sent" not in msg.recipient_status.values():
                left_out = "; ".join(f"{r}: {s.removeprefix('suppressed: ')}" for r, s in msg.recipient_status.items())
                reason = f"every recipient is on the suppression list: {left_out}"
                self.outbox.mark_cancelled(conn, msg, reason, now, msg.recipient_status)
                return _Result(job, "cancelled", None, f"not sent: {msg.subject!r}: {reason}")
            if not refused:
                self.outbox.mark_sent(conn, msg, msg.nominal_sender, now, msg.recipient_status)
                return _Result(job, "sent", msg.nominal_sender)
            reason = "every recipient already has an outcome: " + "; ".join(f"{r}: {s}" for r, s in refused.items())
            self.outbox.mark_failed(conn, msg, reason, now, attempted=False)
        return _Result(job, "failed", None, f"failed: {msg.subject!r}: {reason}")

    def _settle(self, job: _Job) -> tuple[str, str | None, str]:
        """Every candidate was tried, blocked or skipped: defer (nothing is dropped)."""
        msg = job.msg
        now = self.clock()
        if job.blocked and not any(b.until <= now for b in job.blocked):
            until = min(b.until for b in job.blocked)
            reason = "quota: " + "; ".join(dict.fromkeys([b.reason for b in job.blocked] + job.skips))
            with self.store.write() as conn:
                self.outbox.mark_deferred(conn, msg, until, reason, now, attempted=bool(job.failures))
                self.outbox.log(conn, self._attempt_row(msg, None, "deferred", detail=reason))
            return "deferred", job.blocked[0].sender, reason
        parts = [f"{s.key}: {f.kind} {f.code or ''} {f.text}".replace("  ", " ") for s, f in job.failures]
        last = job.failures[-1][0] if job.failures else None
        if (
            job.failures
            and not job.blocked
            and not job.waits_for_skipped
            and all(f.kind == "permanent" and f.code is not None and 500 <= f.code < 600 for _, f in job.failures)
        ):
            # Every sender that could take it refused it for good (552 message too large, 554 ...):
            # retrying for days would get the same answer.
            reason = "every sender refused it for good: " + "; ".join(parts)
            with self.store.write() as conn:
                self.outbox.mark_failed(conn, msg, reason, now, attempted=True, sender=last.key if last else None)
                self.outbox.log(conn, self._attempt_row(msg, last, "failed", detail=reason))
            return (
                "failed",
                last.key if last else None,
                (
                    f"failed: {msg.subject!r} to {', '.join(msg.pending_recipients)}: {reason} "
                    f"(message {msg.id}; 'mailops queue retry {msg.id}' tries again)"
                ),
            )
        reason = "no sender could take it: " + ("; ".join(parts + job.skips) or "the route has no usable sender")
        with self.store.write() as conn:
            if job.failures:
                outcome, note = self._defer_temporary(conn, msg, last, reason, now, None)
            else:
                until = now + self.config.delivery.retry_initial
                self.outbox.mark_deferred(conn, msg, until, reason, now, attempted=False)
                self.outbox.log(conn, self._attempt_row(msg, None, "deferred", detail=reason))
                outcome, note = "deferred", reason
        return outcome, last.key if last else (msg.candidates[0] if msg.candidates else None), note
