"""``mailops send``: validate and render a whole batch, queue it in the outbox, then deliver it.

Nothing is sent before every row has been validated and rendered. Rows are
staged in the database as they are rendered (bounded memory); if any row is
bad the staged rows are discarded and the run stops with exit code 2, unless
``skip_invalid`` asks to send the good rows.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import health, quota, suppress
from .config import Config, Sender
from .errors import ConfigError, InvalidBatchError
from .outbox import Outbox
from .prepare import PreparedMessage, RowProblem, SendRequest, check_request, prepare_messages
from .routing import Plan
from .states import STAGED
from .store import Store

MAX_PROBLEMS_SHOWN = 20


@dataclass
class EnqueueResult:
    """What validation and queueing produced."""

    run_id: str
    plan: Plan
    total: int = 0  # rows (or 1 for a single message) that rendered
    queued: int = 0
    skipped_duplicates: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    problem_count: int = 0
    previews: list[PreparedMessage] = field(default_factory=list)
    quota_room: float | None = None  # dry run: how many the route's senders may still send now
    would_defer: int = 0  # dry run: messages the senders' remaining quota cannot take now
    #: dry run: (sender, room left now, what it counts) for each active candidate with a daily or monthly limit
    rooms: list[tuple[str, float, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # dry run: one line each, e.g. intranet via a public provider
    suppressed_recipients: int = 0  # recipients left out because they are on the suppression list
    suppressed_messages: int = 0  # messages not queued: every recipient is suppressed
    suppressed: list[dict[str, Any]] = field(default_factory=list)  # the first ones, per row (for output)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary of the queueing step."""
        return {
            "run_id": self.run_id,
            "route": self.plan.route,
            "candidates": list(self.plan.candidates),
            "messages": self.total,
            "queued": self.queued,
            "skipped_already_in_batch": self.skipped_duplicates,
            "invalid": self.problem_count,
            "invalid_rows": [p.message for p in self.problems],
            "suppressed_recipients": self.suppressed_recipients,
            "suppressed_messages": self.suppressed_messages,
            "suppressed": self.suppressed,
        }


def _would_defer(sizes: Counter[int], senders: list[Sender], rooms: dict[str, float]) -> int:
    """How many messages (``sizes``: count per number of recipients) the senders' ``rooms`` cannot take now.

    Each message goes to the first sender with room for it, as failover
    does; a recipient-counted room takes one unit per recipient.
    """
    left = dict(rooms)
    deferred = 0
    for recipients, count in sorted(sizes.items()):  # small messages first: the most that can go now
        for sender in senders:
            if count == 0:
                break
            need = quota.units(sender, recipients, "day")
            fits = count if left[sender.key] == float("inf") else min(count, int(left[sender.key] // need))
            left[sender.key] -= fits * need
            count -= fits
        deferred += count
    return deferred


def _collect_intranet(prepared: PreparedMessage, senders: list[Sender], found: dict[str, list[str]]) -> None:
    """Note the intranet addresses of ``prepared`` per sender with a public provider preset (a few each)."""
    from .compose import is_intranet_domain
    from .providers import PUBLIC

    for sender in senders:
        if sender.provider in PUBLIC:
            seen = found.setdefault(sender.key, [])
            for address in prepared.email.envelope_to:
                if len(seen) < 100 and is_intranet_domain(address.rpartition("@")[2]) and address not in seen:
                    seen.append(address)


def check_credentials(config: Config, plan: Plan) -> str | None:
    """Refuse a route none of whose active senders can log in (ConfigError, exit 2, before anything is
    queued); when only some cannot, the warning line naming them (else None)."""
    from . import secrets

    active = [config.senders[k] for k in plan.candidates if k in config.senders and config.senders[k].active]
    problems = [p for p in (secrets.credentials_problem(s) for s in active) if p]
    if not problems:
        return None
    where = f"route {plan.route!r}" if plan.route else f"sender {plan.nominal!r}"
    if len(problems) == len(active):
        raise ConfigError(f"{where}: no sender can log in, nothing was queued: " + "; ".join(problems))
    return f"{where}: {len(problems)} of {len(active)} senders cannot log in and are skipped: " + "; ".join(problems)


def _whole_limit(sender: Sender) -> tuple[str, int] | None:
    """(key, value) of the smallest recipient-counted limit of ``sender``; None if its limits count messages."""
    if sender.limit_unit != "recipients":
        return None
    limits = [
        (name, value) for name in ("daily_limit", "monthly_limit") if (value := getattr(sender, name)) is not None
    ]
    return min(limits, key=lambda item: item[1]) if limits else None


def message_problem(
    prepared: PreparedMessage, senders: list[Sender], server_sizes: dict[str, int] | None = None
) -> str | None:
    """Why no sender of the route could ever send ``prepared`` (one line naming it), or None.

    Any of ``senders`` may be the one that sends it (failover, balancing), so
    the message must fit each: its size within every ``max_message_size`` and
    every SIZE its server announced at the last successful EHLO (``server_sizes``,
    by sender key), and its recipients within every whole limit that counts
    recipients (otherwise it would wait in the outbox for ever).
    """
    mail = prepared.email
    size = mail.size
    for sender in senders:
        if sender.max_message_size is not None and size > sender.max_message_size:
            return (
                f"{prepared.label}: the message is {size:,} bytes; sender {sender.key} takes at most "
                f"{sender.max_message_size:,} (max_message_size{_origin(sender, 'max_message_size')}); "
                "send smaller attachments or links to them"
            )
        announced = (server_sizes or {}).get(sender.key)
        if announced is not None and size > announced:
            return (
                f"{prepared.label}: the message is {size:,} bytes; sender {sender.key}'s server "
                f"{sender.host}:{sender.port} takes at most {announced:,} (the SIZE it announced when last "
                "reached); send smaller attachments or links to them"
            )
        whole = _whole_limit(sender)
        if whole is not None and len(mail.envelope_to) > whole[1]:
            return (
                f"{prepared.label}: {len(mail.envelope_to):,} recipients, more than sender {sender.key}'s whole "
                f"{whole[0]} of {whole[1]:,} recipients "
                f"({whole[0]}{_origin(sender, whole[0])}, limit_unit: recipients); "
                "split the recipients over several messages"
            )
    return None


def announced_sizes(conn: Any, senders: list[Sender]) -> dict[str, int]:
    """The SIZE each sender's server announced when last reached with its current settings (those known)."""
    healths = health.load(conn)
    found = {s.key: health.server_max_size(healths.get(s.key), s) for s in senders}
    return {key: size for key, size in found.items() if size is not None}


def _origin(sender: Sender, key: str) -> str:
    source = dict(sender.sources).get(key)
    return f" from {source}" if source and source.startswith("provider") else ""


def _row(prepared: PreparedMessage, plan: Plan, run_id: str, batch: str | None, now: float) -> dict[str, Any]:
    mail = prepared.email
    return {
        "created_at": now,
        "updated_at": now,
        "run_id": run_id,
        "batch": batch,
        "dedup_key": prepared.dedup_key,
        "route": plan.route,
        "strategy": plan.strategy,
        "candidates": json.dumps(list(plan.candidates)),
        "nominal_sender": plan.nominal,
        "sender": None,
        "envelope_from": mail.envelope_from,
        "recipients": json.dumps(mail.envelope_to),
        "to_header": mail.to_header,
        "subject": mail.subject,
        "template": prepared.template,
        "message_id": mail.message_id,
        "mime": mail.skeleton,
        "stored": mail.stored,  # attachment bodies: Outbox.stage stores each once and writes the references
        "row": prepared.row,
        "state": STAGED,
        "due_at": now,
        "keep_date": prepared.keep_date,
        "note": prepared.note,
        "include_suppressed": prepared.include_suppressed,
    }


def _leave_out_suppressed(item: PreparedMessage, suppressed: dict[str, str], result: EnqueueResult) -> PreparedMessage:
    """The message without its suppressed recipients (envelope only: the headers say whom it was written to)."""
    if not suppressed:
        return item
    hits = [(rcpt, suppressed[key]) for rcpt in item.email.envelope_to if (key := rcpt.lower()) in suppressed]
    if not hits:
        return item
    kept = [rcpt for rcpt in item.email.envelope_to if rcpt.lower() not in suppressed]
    result.suppressed_recipients += len(hits)
    if not kept:
        result.suppressed_messages += 1
    for rcpt, reason in hits:
        if len(result.suppressed) < MAX_PROBLEMS_SHOWN:
            result.suppressed.append({"row": item.row, "label": item.label, "recipient": rcpt, "reason": reason})
    item.suppressed = hits
    item.email = dataclasses.replace(item.email, envelope_to=kept)
    return item


def enqueue(
    config: Config,
    store: Store | None,
    request: SendRequest,
    plan: Plan,
    *,
    now: float,
    batch: str | None = None,
    skip_invalid: bool = False,
    dry_run: bool = False,
    preview: int = 0,
    due_at: float | None = None,
    include_suppressed: bool = False,
) -> EnqueueResult:
    """Validate and render every message, then queue them (or, with ``dry_run``, only count them).

    Raises InvalidBatchError (exit 2, nothing queued) when a row is bad and
    ``skip_invalid`` is false. ``due_at`` schedules the messages (``send --at``); default: due now.
    Recipients on the suppression list are left out of the envelope (a message
    none of whose recipients is left is not queued) unless ``include_suppressed``.
    """
    check_request(request, config)
    result = EnqueueResult(run_id=uuid.uuid4().hex, plan=plan)
    sender = config.senders[plan.nominal]
    local_now = datetime.fromtimestamp(now, config.timezone)

    candidates = [config.senders[k] for k in plan.candidates if config.senders[k].active]
    internal: dict[str, list[str]] = {}  # dry run: sender key -> intranet addresses its public provider cannot reach
    sizes: Counter[int] = Counter()  # dry run: messages per number of recipients (bounded: one entry per count)

    def rows() -> Any:
        route = config.routes.get(plan.route) if plan.route else None
        for item in prepare_messages(request, config, sender, now=local_now, route=route):
            if not isinstance(item, RowProblem):
                problem = message_problem(item, candidates, server_sizes)
                if problem is not None:
                    item = RowProblem(row=item.row, label=item.label, message=problem)
                elif dry_run:
                    _collect_intranet(item, candidates, internal)
                    sizes[len(item.email.envelope_to)] += 1
            if isinstance(item, RowProblem):
                result.problem_count += 1
                if len(result.problems) < MAX_PROBLEMS_SHOWN:
                    result.problems.append(item)
                continue
            result.total += 1
            item = _leave_out_suppressed(item, suppressed, result)
            item.include_suppressed = include_suppressed
            if len(result.previews) < preview:
                result.previews.append(item)
            if not dry_run and item.email.envelope_to:
                yield _row(item, plan, result.run_id, batch, now)

    suppressed: dict[str, str] = {}
    server_sizes: dict[str, int] = {}
    if store is not None:
        with store.read() as conn:
            if not include_suppressed:
                suppressed = suppress.all_reasons(conn)
            server_sizes = announced_sizes(conn, candidates)
    outbox = Outbox(store, config.delivery) if store is not None else None
    try:
        if outbox is not None and not dry_run:
            outbox.stage(rows())
        else:
            for _ in rows():
                pass
    except BaseException:
        # Interrupted or a request-level error mid-way: staged rows were never queued.
        if outbox is not None and not dry_run:
            outbox.discard(result.run_id)
        raise
    if result.problem_count and not skip_invalid:
        if outbox is not None and not dry_run:
            outbox.discard(result.run_id)
        raise InvalidBatchError(
            [p.message for p in result.problems], result.total + result.problem_count, result.problem_count
        )
    if dry_run:
        from .providers import intranet_warning

        for sender_key, addresses in internal.items():
            warning = intranet_warning(config.senders[sender_key].provider, sender_key, addresses)
            if warning:
                result.warnings.append(warning)
        if store is not None:
            with store.read() as conn:
                used = quota.usage(conn, list(plan.candidates), config.timezone, now)
            result.quota_room = sum(quota.headroom(s, used[s.key]) for s in candidates)
            rooms = {s.key: quota.headroom(s, used[s.key]) for s in candidates}
            result.rooms = [(s.key, rooms[s.key], s.limit_unit) for s in candidates if rooms[s.key] != float("inf")]
            result.would_defer = _would_defer(sizes, candidates, rooms)
        return result
    assert outbox is not None
    result.queued, result.skipped_duplicates = outbox.promote(result.run_id, now, due_at)
    # retention as we go: a few batches of expired bodies per run (the next run goes on)
    outbox.expire_bodies(now - config.retention, now)
    return result
