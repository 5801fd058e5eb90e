"""A Django email backend: ``EMAIL_BACKEND = "mailops.django.EmailBackend"`` (install ``mailops[django]``).

Every ``EmailMessage`` / ``EmailMultiAlternatives`` (attachments included)
that Django sends is queued in mailops' outbox, then delivered at once (or
left for ``mailops deliver`` with ``MAILOPS_DELIVER = False``), through the
same checks as ``mailops sendmail``: the message keeps Django's headers and
body, From becomes the route's sender when it is another address.

The route of a message, first match wins:

1. an ``X-Mailops-Route`` header (``EmailMessage(headers={...})``), removed before sending;
2. ``MAILOPS_ROUTES``: a mapping of ``from_email`` addresses (or ``@domain``) to routes;
3. ``MAILOPS_ROUTE``: one route for everything;
4. the ``sendmail:`` mapping of senders.yaml, else its ``default`` route.

``MAILOPS_CONFIG`` names senders.yaml (else the CLI's discovery:
``$MAILOPS_CONFIG``, ``./senders.yaml``, the user config dir).
``fail_silently=True`` turns mailops' errors (bad address, unknown route,
config or database problem) into a message not counted as sent. Recipients on
mailops' suppression list are left out (a warning on the ``mailops`` logger);
a message with none left is not queued and not counted as sent. Django's own
Date (the time the message was built) is replaced at hand-over; a Date the
application set in ``headers`` is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any

from django.conf import settings
from django.core.mail.backends.base import BaseEmailBackend
from django.core.mail.message import EmailMessage

from .errors import MailopsError

ROUTE_HEADER = "X-Mailops-Route"
#: what the checks shared with ``mailops sendmail`` call things, in Django's terms (see mailops.wording)
VOCABULARY = {
    "standard input": "the message",
    "recipient argument": "recipient",
    "--route": "MAILOPS_ROUTE",
}
_log = logging.getLogger("mailops")


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]  # django ships no type hints
    """Queues Django's messages in the mailops outbox and delivers them through their route."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        """Queue (and deliver) each message; returns how many were queued."""
        if not email_messages:
            return 0
        from .config import load_config
        from .store import Store

        queued = 0
        try:
            config = load_config(getattr(settings, "MAILOPS_CONFIG", None))
            store = Store.open(config.database_url)
        except MailopsError:
            if not self.fail_silently:
                raise
            return 0
        try:
            for message in email_messages:
                try:
                    if not self._send(config, store, message):
                        continue
                except MailopsError:
                    if not self.fail_silently:
                        raise
                    continue
                queued += 1
        finally:
            store.close()
        return queued

    def _send(self, config: Any, store: Any, message: EmailMessage) -> bool:
        """Queue (and deliver) one message; False when it was not queued (every recipient suppressed)."""
        from . import gateway
        from .errors import UsageError
        from .wording import speaking

        recipients = list(message.recipients())
        if not recipients:
            return False
        route, source = self._route(message)
        if route is not None and route not in config.routes:
            known = ", ".join(config.routes) or "(none)"
            raise UsageError(f"{source} {route!r}: no such route in {config.path}; known routes: {known}")
        # Django writes a Date when the message is built; only one the application set itself is kept as written
        own_date = any(str(key).lower() == "date" for key in message.extra_headers)
        data = message.message().as_bytes(linesep="\r\n")
        args = gateway.SendmailArgs(recipients=recipients, route=route, keep_date=own_date)
        with speaking(VOCABULARY):
            accepted = gateway.accept(config, store, args, data, now=time.time())
        if accepted.suppressed:
            left_out = ", ".join(f"{rcpt} ({reason})" for rcpt, reason in accepted.suppressed)
            what = "not queued: every recipient is" if not accepted.queued else "left out recipients"
            _log.warning("mailops: message %s %s on the suppression list: %s", accepted.message_id, what, left_out)
        if not accepted.queued:
            return False
        if getattr(settings, "MAILOPS_DELIVER", True):
            from .delivery import Deliverer

            report = Deliverer(config, store).run(run_id=accepted.run_id)
            for line in report.warnings:
                _log.warning(line)
        return True

    @staticmethod
    def _route(message: EmailMessage) -> tuple[str | None, str]:
        """The message's route and where it came from: the header, ``MAILOPS_ROUTES`` or ``MAILOPS_ROUTE``
        (the header is removed); (None, ...) to let the ``sendmail:`` mapping decide."""
        for key in list(message.extra_headers):
            if key.lower() == ROUTE_HEADER.lower():
                route = str(message.extra_headers.pop(key)).strip()
                if route:
                    return route, f"header {ROUTE_HEADER}"
        by_from = {str(k).lower(): v for k, v in (getattr(settings, "MAILOPS_ROUTES", None) or {}).items()}
        address = parseaddr(message.from_email)[1].lower()
        for key in (address, "@" + address.rpartition("@")[2]):
            if key in by_from:
                return str(by_from[key]), f"MAILOPS_ROUTES[{key!r}]"
        fixed = getattr(settings, "MAILOPS_ROUTE", None)
        return (str(fixed), "MAILOPS_ROUTE") if fixed else (None, "")
