"""Delivering claimed messages: routing, quota reservation, SMTP, outcome, log.

For each claimed message: order the route's candidates, reserve quota on the
first that may send, send over a reused session, and record the outcome and
the attempt in one transaction. Sender problems (auth, TLS, connection,
timeout) fail over to the next candidate; a recipient's permanent refusal
does not; temporary failures are retried later with backoff; a message no
candidate may send now is deferred until it may.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import health, quota, routing
from .config import Config, Sender
from .errors import SecretError
from .outbox import Outbox, QueuedMessage, retry_delay
from .store import Store
from .transport import SmtpFailure, SmtpSession

CLAIM_SIZE = 20
#: a rate limit (per_minute, min_interval) that frees up within this many seconds is waited for, not deferred
MAX_PACING_WAIT = 65.0


@dataclass
class DeliveryReport:
    """What a delivery run did, per sender, for the summary and the exit code."""

    sent: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    next_due_at: float | None = None
    interrupted: bool = False
    problems: list[str] = field(default_factory=list)  # one line per deferral/failure reason (deduplicated)

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

    def note(self, text: str) -> None:
        """Remember a reason once."""
        if text not in self.problems and len(self.problems) < 50:
            self.problems.append(text)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        senders = sorted(set(self.sent) | set(self.deferred) | set(self.failed))
        return {
            "sent": self.total_sent,
            "deferred": self.total_deferred,
            "failed": self.total_failed,
            "next_due_at": self.next_due_at,
            "interrupted": self.interrupted,
            "per_sender": {
                s: {"sent": self.sent[s], "deferred": self.deferred[s], "failed": self.failed[s]} for s in senders
            },
            "problems": self.problems,
        }


PasswordLookup = Callable[[Sender], str]


def _default_password(sender: Sender) -> str:
    from . import secrets

    return secrets.get_password(sender)


class Deliverer:
    """One delivery worker: claims due messages and sends them, reusing one SMTP session per sender."""

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
        self.worker = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.stop_event = threading.Event()
        # Waiting on the stop event lets Ctrl-C / a stop request cut a pacing wait short.
        self.sleep = sleep or self.stop_event.wait
        self._password_lookup = password_lookup
        self._passwords: dict[str, str | None] = {}
        self._password_errors: dict[str, str] = {}
        self._sessions: dict[str, SmtpSession] = {}
        self._known_healthy: set[str] = set()

    # ------------------------------------------------------------ run loop

    def run(
        self,
        *,
        run_id: str | None = None,
        limit: int | None = None,
        max_seconds: float | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> DeliveryReport:
        """Deliver due messages (of one ``run_id`` when given) until none is due, ``limit`` or the deadline."""
        report = DeliveryReport()
        start = self.clock()
        deadline = start + max_seconds if max_seconds is not None else None
        done = 0
        try:
            while not self.stop_event.is_set():
                if limit is not None and done >= limit:
                    break
                if deadline is not None and self.clock() >= deadline:
                    break
                want = CLAIM_SIZE if limit is None else min(CLAIM_SIZE, limit - done)
                claimed = self.outbox.claim(self.worker, self.clock(), want, run_id=run_id)
                if not claimed:
                    break
                lease_renew_at = self.clock() + self.config.delivery.lease / 2
                for index, msg in enumerate(claimed):
                    out_of_time = deadline is not None and self.clock() >= deadline
                    if self.stop_event.is_set() or out_of_time:
                        self.outbox.unclaim(self.worker, [m.id for m in claimed[index:]], self.clock())
                        report.interrupted = self.stop_event.is_set()
                        break
                    if self.clock() >= lease_renew_at:
                        self.outbox.renew(self.worker, [m.id for m in claimed[index:]], self.clock())
                        lease_renew_at = self.clock() + self.config.delivery.lease / 2
                    outcome, sender = self._deliver_one(msg, report, deadline)
                    done += 1
                    getattr(report, outcome)[sender or "-"] += 1
                    if progress:
                        progress(outcome)
        except KeyboardInterrupt:
            report.interrupted = True
            raise
        finally:
            self.close()
        summary = self.outbox.due_summary(self.clock(), run_id)
        report.next_due_at = summary["next_due_at"]
        return report

    def close(self) -> None:
        """Close every open SMTP session."""
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()

    # ------------------------------------------------------------ one message

    def _password(self, sender: Sender) -> str | None:
        if not sender.auth:
            return None
        if sender.key not in self._passwords and sender.key not in self._password_errors:
            try:
                self._passwords[sender.key] = self._password_lookup(sender)
            except SecretError as exc:
                self._password_errors[sender.key] = str(exc)
        return self._passwords.get(sender.key)

    def _has_password(self, keys: list[str]) -> dict[str, bool]:
        out = {}
        for key in keys:
            sender = self.config.senders.get(key)
            if sender is not None and sender.active:
                out[key] = (not sender.auth) or self._password(sender) is not None
        return out

    def _session(self, sender: Sender, password: str | None) -> SmtpSession:
        session = self._sessions.get(sender.key)
        if session is None:
            session = SmtpSession(sender, password, max_per_connection=sender.max_per_connection)
            self._sessions[sender.key] = session
        return session

    def _drop_session(self, key: str) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
            session.close()

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
        if sender.key == msg.nominal_sender:
            return msg.mime
        from .compose import rewrite_sender

        reply_to = None
        if sender.reply_to:
            from .compose import parse_address

            reply_to = [parse_address(sender.reply_to, where=f"senders.{sender.key}.reply_to")]
        from email.headerregistry import Address

        return rewrite_sender(
            msg.mime,
            from_addr=Address(display_name=sender.display_name or "", addr_spec=sender.email),
            reply_to=reply_to,
            envelope_from=sender.email,
        )

    def _deliver_one(
        self, msg: QueuedMessage, report: DeliveryReport, deadline: float | None
    ) -> tuple[str, str | None]:
        """Try the candidates in order; returns (outcome, sender key) with outcome sent|deferred|failed."""
        tz = self.config.timezone
        skip_notes: list[str] = []
        failures: list[tuple[Sender, SmtpFailure]] = []
        for _round in range(5):  # bounded: pacing waits retry the whole candidate list a few times
            now = self.clock()
            with self.store.write() as conn:
                healths = health.load(conn)
                senders, skips = routing.order(
                    conn,
                    self.config,
                    msg.route,
                    msg.candidates,
                    self._strategy(msg),
                    now,
                    healths,
                    self._has_password(msg.candidates),
                )
            skip_notes = [f"skipped {s.sender}: {s.reason}" for s in skips]
            blocked: list[quota.Blocked] = []
            for sender in senders:
                if any(f[0].key == sender.key for f in failures):
                    continue
                with self.store.write() as conn:
                    held = quota.reserve(conn, sender, tz, self.clock())
                if isinstance(held, quota.Blocked):
                    blocked.append(held)
                    continue
                result = self._try_send(msg, sender, held, report)
                if isinstance(result, SmtpFailure):  # sender problem: fail over to the next candidate
                    failures.append((sender, result))
                    continue
                return result, sender.key
            if not blocked:
                break
            soonest = min(b.until for b in blocked)
            wait = soonest - self.clock()
            pacing = all(b.kind in ("minute", "interval") for b in blocked)
            fits = deadline is None or self.clock() + wait < deadline
            if pacing and wait <= MAX_PACING_WAIT and fits and not self.stop_event.is_set():
                self.sleep(max(wait, 0.0))
                continue
            return self._defer_blocked(msg, blocked, failures, skip_notes, report), blocked[0].sender
        return self._no_sender(msg, failures, skip_notes, report)

    def _strategy(self, msg: QueuedMessage) -> str:
        route = self.config.routes.get(msg.route or "")
        return route.strategy if route else msg.strategy

    def _try_send(
        self, msg: QueuedMessage, sender: Sender, held: quota.Reservation, report: DeliveryReport
    ) -> str | SmtpFailure:
        """Send via ``sender``; returns the outcome, or the failure when the next sender should try."""
        password = self._password(sender)
        recipients = msg.pending_recipients
        started = self.clock()
        try:
            mime = self._mime_for(msg, sender)
            session = self._session(sender, password)
            result = session.send(mime, sender.email, recipients)
        except SmtpFailure as failure:
            duration = self.clock() - started
            return self._record_failure(msg, sender, held, failure, duration, report)
        duration = self.clock() - started
        now = self.clock()
        status = dict(msg.recipient_status)
        for rcpt in result.accepted:
            status[rcpt] = "sent"
        temp_refused = {}
        for rcpt, (code, text) in result.refused.items():
            if 500 <= code < 600:
                status[rcpt] = f"failed: {code} {text}"
            else:
                temp_refused[rcpt] = (code, text)
        refused_note = "; ".join(f"{r}: {c} {t}" for r, (c, t) in result.refused.items()) or None
        outcome_row = "sent" if not result.refused else "partial"
        with self.store.write() as conn:
            self.outbox.log(
                conn,
                self._attempt_row(
                    msg,
                    sender,
                    outcome_row,
                    smtp_code=result.code,
                    smtp_text=result.text,
                    detail=refused_note,
                    duration=duration,
                ),
            )
            if temp_refused:
                # Accepted ones are done; only the temporarily refused recipients wait for a retry.
                self._defer_temporary(
                    conn, msg, sender, f"{len(temp_refused)} recipient(s) temporarily refused", now, report, status
                )
                outcome = "deferred"
            else:
                self.outbox.mark_sent(conn, msg, sender.key, now, status)
                outcome = "sent"
            self._mark_healthy(conn, sender, now)
        return outcome

    def _mark_healthy(self, conn: Any, sender: Sender, now: float) -> None:
        # One write per run and sender, not per message.
        if sender.key not in self._known_healthy:
            health.record(conn, sender.key, True, now)
            self._known_healthy.add(sender.key)

    def _record_failure(
        self,
        msg: QueuedMessage,
        sender: Sender,
        held: quota.Reservation,
        failure: SmtpFailure,
        duration: float,
        report: DeliveryReport,
    ) -> str | SmtpFailure:
        now = self.clock()
        text = f"{failure.step}: {failure.code or ''} {failure.text}".replace("  ", " ")
        with self.store.write() as conn:
            quota.release(conn, held)
            if failure.sender_problem:
                self._drop_session(sender.key)
                health.record(conn, sender.key, False, now, text)
                self._known_healthy.discard(sender.key)
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
                report.note(f"{sender.key}: {failure.kind}: {failure.text}")
                return failure
            if failure.temporary:
                self._drop_session(sender.key)
                self.outbox.log(
                    conn,
                    self._attempt_row(
                        msg,
                        sender,
                        "deferred",
                        smtp_code=failure.code,
                        smtp_text=failure.text,
                        detail=f"temporary failure at {failure.step}",
                        duration=duration,
                    ),
                )
                return self._defer_temporary(conn, msg, sender, text, now, report, None)
            # Permanent: the recipients (or the message) are refused; another sender would not help.
            status = dict(msg.recipient_status)
            for rcpt in msg.pending_recipients:
                status[rcpt] = f"failed: {failure.code} {failure.text}"
            self.outbox.log(
                conn,
                self._attempt_row(
                    msg,
                    sender,
                    "failed",
                    smtp_code=failure.code,
                    smtp_text=failure.text,
                    detail=f"permanent failure at {failure.step}",
                    duration=duration,
                ),
            )
            self.outbox.mark_failed(conn, msg, text, now, attempted=True, sender=sender.key, recipient_status=status)
            report.note(f"{msg.subject!r} to {', '.join(msg.pending_recipients)}: {text}")
            return "failed"

    def _defer_temporary(
        self,
        conn: Any,
        msg: QueuedMessage,
        sender: Sender | None,
        reason: str,
        now: float,
        report: DeliveryReport,
        status: dict[str, str] | None,
    ) -> str:
        policy = self.config.delivery
        failures = msg.attempts + 1
        first = msg.first_attempt_at or now
        if now - first >= policy.give_up_after:
            final = f"gave up after {failures} attempts over {(now - first) / 3600:.1f} h: {reason}"
            self.outbox.mark_failed(
                conn, msg, final, now, attempted=True, sender=sender.key if sender else None, recipient_status=status
            )
            self.outbox.log(conn, self._attempt_row(msg, sender, "failed", detail=final))
            report.note(final)
            return "failed"
        until = now + retry_delay(failures, policy)
        self.outbox.mark_deferred(
            conn,
            msg,
            until,
            f"temporary failure: {reason}",
            now,
            attempted=True,
            sender=sender.key if sender else None,
            recipient_status=status,
        )
        report.note(f"temporary failure: {reason}")
        return "deferred"

    def _defer_blocked(
        self,
        msg: QueuedMessage,
        blocked: list[quota.Blocked],
        failures: list[tuple[Sender, SmtpFailure]],
        skip_notes: list[str],
        report: DeliveryReport,
    ) -> str:
        now = self.clock()
        until = min(b.until for b in blocked)
        reasons = [b.reason for b in blocked] + skip_notes
        reason = "quota: " + "; ".join(reasons)
        with self.store.write() as conn:
            self.outbox.mark_deferred(conn, msg, until, reason, now, attempted=bool(failures))
            self.outbox.log(conn, self._attempt_row(msg, None, "deferred", detail=reason))
        report.note(reason)
        return "deferred"

    def _no_sender(
        self,
        msg: QueuedMessage,
        failures: list[tuple[Sender, SmtpFailure]],
        skip_notes: list[str],
        report: DeliveryReport,
    ) -> tuple[str, str | None]:
        """Every candidate failed or was skipped: retry later (nothing is dropped)."""
        now = self.clock()
        parts = [f"{s.key}: {f.kind} {f.code or ''} {f.text}".replace("  ", " ") for s, f in failures] + skip_notes
        reason = "no sender could take it: " + ("; ".join(parts) or "route has no usable sender")
        last = failures[-1][0] if failures else None
        with self.store.write() as conn:
            if failures:
                outcome = self._defer_temporary(conn, msg, last, reason, now, report, None)
            else:
                until = now + self.config.delivery.retry_initial
                self.outbox.mark_deferred(conn, msg, until, reason, now, attempted=False)
                self.outbox.log(conn, self._attempt_row(msg, None, "deferred", detail=reason))
                report.note(reason)
                outcome = "deferred"
        return outcome, last.key if last else (msg.candidates[0] if msg.candidates else None)


def encode_recipients(recipients: list[str]) -> str:
    """JSON for the ``recipients`` column."""
    return json.dumps(recipients)
