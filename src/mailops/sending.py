"""``mailops send``: validate and render a whole batch, queue it in the outbox, then deliver it.

Nothing is sent before every row has been validated and rendered. Rows are
staged in the database as they are rendered (bounded memory); if any row is
bad the staged rows are discarded and the run stops with exit code 2, unless
``skip_invalid`` asks to send the good rows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import quota
from .config import Config
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
        }


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
        "mime": mail.mime,
        "row": prepared.row,
        "state": STAGED,
        "due_at": now,
    }


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
) -> EnqueueResult:
    """Validate and render every message, then queue them (or, with ``dry_run``, only count them).

    Raises InvalidBatchError (exit 2, nothing queued) when a row is bad and
    ``skip_invalid`` is false.
    """
    check_request(request, config)
    result = EnqueueResult(run_id=uuid.uuid4().hex, plan=plan)
    sender = config.senders[plan.nominal]
    local_now = datetime.fromtimestamp(now, config.timezone)

    def rows() -> Any:
        route = config.routes.get(plan.route) if plan.route else None
        for item in prepare_messages(request, config, sender, now=local_now, route=route):
            if isinstance(item, RowProblem):
                result.problem_count += 1
                if len(result.problems) < MAX_PROBLEMS_SHOWN:
                    result.problems.append(item)
                continue
            result.total += 1
            if len(result.previews) < preview:
                result.previews.append(item)
            if not dry_run:
                yield _row(item, plan, result.run_id, batch, now)

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
        if store is not None:
            with store.read() as conn:
                used = quota.usage(conn, list(plan.candidates), config.timezone, now)
            result.quota_room = sum(
                quota.headroom(config.senders[k], used[k]) for k in plan.candidates if config.senders[k].active
            )
        return result
    assert outbox is not None
    result.queued, result.skipped_duplicates = outbox.promote(result.run_id, now)
    return result
