"""A Python API for applications: mail through mailops' routes, quotas, outbox and log, without the CLI.

::

    from mailops import api

    ids = api.send(route="renewal", template="renewal", to=["Jane <jane@example.com>"],
                   variables={"contract": "C-1042"}, attachments=["invoices/C-1042.pdf"])
    ids = api.enqueue(subject="Nightly report", body="All {{ n }} jobs done.", variables={"n": 12},
                      group=["system-admins"], at="+2h")

The same things ``mailops send`` takes, checked by the same code (prepare,
sending, outbox): the config is found as the CLI finds it (``config=``, then
``MAILOPS_CONFIG``, ``./senders.yaml``, the user config dir) and the same
database is used. Errors are the exceptions of :mod:`mailops.errors`
(``UsageError``, ``ConfigError``, ``InputError``/``InvalidBatchError``,
``StoreError``), raised before anything is queued.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["enqueue", "send"]

_log = logging.getLogger("mailops")

PathLike = str | os.PathLike[str]


def enqueue(
    *,
    to: Iterable[str] = (),
    cc: Iterable[str] = (),
    bcc: Iterable[str] = (),
    group: Iterable[str] = (),
    data: PathLike | None = None,
    to_column: str = "email",
    route: str | None = None,
    sender: str | None = None,
    template: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    body_file: PathLike | None = None,
    variables: Mapping[str, Any] | None = None,
    attachments: Iterable[PathLike] = (),
    reply_to: str | None = None,
    batch: str | None = None,
    at: str | datetime | None = None,
    skip_invalid: bool = False,
    include_suppressed: bool = False,
    config: PathLike | None = None,
) -> list[int]:
    """Validate, render and queue the messages (due now, or at ``at``); returns their outbox ids.

    ``at`` is ``+30m``/``+2h``/``+1d``, an ISO date-time, or a ``datetime``
    (a naive one is in the config's time zone); it must be in the future.
    Nothing is sent here: ``mailops deliver`` (cron) sends what is due. Recipients on the suppression
    list are left out (a message with none left is not queued) unless ``include_suppressed``.
    """
    return _queue(locals(), deliver=False)


def send(
    *,
    to: Iterable[str] = (),
    cc: Iterable[str] = (),
    bcc: Iterable[str] = (),
    group: Iterable[str] = (),
    data: PathLike | None = None,
    to_column: str = "email",
    route: str | None = None,
    sender: str | None = None,
    template: str | None = None,
    subject: str | None = None,
    body: str | None = None,
    body_file: PathLike | None = None,
    variables: Mapping[str, Any] | None = None,
    attachments: Iterable[PathLike] = (),
    reply_to: str | None = None,
    batch: str | None = None,
    at: str | datetime | None = None,
    skip_invalid: bool = False,
    include_suppressed: bool = False,
    config: PathLike | None = None,
) -> list[int]:
    """:func:`enqueue`, then deliver the queued messages now (unless ``at`` schedules them); returns their ids.

    A message the server does not take now (quota, a server down) stays in
    the outbox for ``mailops deliver``, as with ``mailops send``; its state is
    in ``mailops queue show ID`` and the log.
    """
    return _queue(locals(), deliver=True)


def _variables(values: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if not str(key).isidentifier() or not isinstance(key, str):
            raise UsageError(f"variables: {key!r} is not a name a template can use (letters, digits and '_')")
        out[key] = value
    return out


def _queue(args: dict[str, Any], *, deliver: bool) -> list[int]:
    from .wording import API, speaking

    with speaking(API):  # error lines name this module's parameters, not the CLI's options
        return _queue_checked(args, deliver=deliver)


def _queue_checked(args: dict[str, Any], *, deliver: bool) -> list[int]:
    from . import routing, sending
    from .config import load_config
    from .history import parse_at
    from .outbox import Outbox
    from .prepare import SendRequest
    from .store import Store

    for name in ("to", "cc", "bcc", "group", "attachments"):
        if isinstance(args[name], str | os.PathLike):
            args[name] = [args[name]]  # one address or path, not its characters
    config = load_config(args["config"])
    plan = routing.resolve(config, args["route"], args["sender"])
    now = time.time()
    at = args["at"]
    due_at = None
    if at is not None:
        due_at = parse_at(at.isoformat() if isinstance(at, datetime) else str(at), config.timezone, now, option="at")
    request = SendRequest(
        to=list(args["to"]),
        cc=list(args["cc"]),
        bcc=list(args["bcc"]),
        groups=list(args["group"]),
        data_file=None if args["data"] is None else Path(args["data"]),
        to_column=args["to_column"],
        template=args["template"],
        subject=args["subject"],
        body=args["body"],
        body_file=None if args["body_file"] is None else Path(args["body_file"]),
        variables=_variables(args["variables"]),
        attachments=[Path(p) for p in args["attachments"]],
        reply_to=args["reply_to"],
    )
    warning = sending.check_credentials(config, plan)
    if warning:
        _log.warning(warning)
    store = Store.open(config.database_url)
    try:
        result = sending.enqueue(
            config,
            store,
            request,
            plan,
            now=now,
            batch=args["batch"],
            skip_invalid=args["skip_invalid"],
            due_at=due_at,
            include_suppressed=args["include_suppressed"],
        )
        ids = Outbox(store, config.delivery).ids_of_run(result.run_id)
        if deliver and due_at is None and ids:
            from .delivery import Deliverer

            report = Deliverer(config, store).run(run_id=result.run_id)
            for line in report.warnings:
                _log.warning(line)
        return ids
    finally:
        store.close()
