"""``mailops sendmail``: one RFC 5322 message from standard input into the outbox, as /usr/sbin/sendmail takes it.

cron (MAILTO), mailx, logwatch, git send-email and PHP's ``mail()`` hand their
mail to ``sendmail`` with a handful of flags. This module parses those flags,
reads and checks the message, picks the route (``--route``, else the
``sendmail:`` mapping of senders.yaml, else the ``default`` route) and turns
the message into an outbox row. The message keeps its own headers (raw UTF-8
encoded as RFC 2047/2231) and body, its own Date included; Bcc is removed,
Date and Message-ID are added when missing, and From is rewritten only when
the route's sender requires it (mailboxes such as Gmail or Microsoft 365 send
only as themselves; a relay that does not log in takes any From and ``-f``).
Suppressed recipients are left out. No SMTP here: the CLI delivers the queued
row like any other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import quopri
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.utils import format_datetime, parseaddr
from typing import BinaryIO

from . import routing
from .compose import (
    ADDRESS_FIELDS,
    PreparedEmail,
    check_header_text,
    encode_field,
    make_address,
    make_message_id,
    parse_address,
    rewrite_sender,
)
from .config import Config, Sender
from .controls import header_problem
from .errors import ConfigError, InputError, NoInputError, UsageError
from .limits import SENDMAIL_MAX_BYTES, human_size
from .outbox import Outbox
from .prepare import PreparedMessage
from .routing import Plan
from .store import Store
from .wording import term

USAGE = """\
usage: mailops sendmail [-t] [-i] [-f ADDR] [-F NAME] [--route R] [RCPT...]
                        < message

Reads one RFC 5322 message (headers, an empty line, the body) on standard
input, queues it in the outbox and delivers it at once; exit 0 once it is
queued.
  -t          also send to the To, Cc and Bcc addresses of the message
              (Bcc is removed)
  -i, -oi     a line holding only '.' does not end the message
  -f ADDR     envelope sender (a sender that logs in sends as itself); picks
              the route through 'sendmail: from:' (-r is the same)
  -F NAME     display name for a From header mailops writes
  --route R   use route R (else senders.yaml 'sendmail:', else the 'default'
              route)
Accepted and ignored: -bm, -oXXX (-oem, -odb, -odi ...), -B, -C, -L, -N, -O,
-R, -V, -X, -h, -p with their values, -v, -m, -n, -U, -Ac, -Am.
Exit codes: 0 queued, 64 usage, 65 bad message, 66 no message, 75 database
unavailable (try again), 78 configuration problem.

Examples:
  echo 'Subject: backup done' | mailops sendmail admin@example.com
  mailops sendmail -t -i < message.eml
"""

WHERE = "standard input"

# sendmail options that take a value, attached (-fADDR) or as the next argument (-f ADDR)
_VALUE_OPTIONS = frozenset({"-f", "-r", "-F", "-B", "-C", "-L", "-N", "-O", "-R", "-V", "-X", "-h", "-p"})
# flags without a value that change nothing here; they may be clustered (-ti, -vi)
_FLAGS_RE = re.compile(r"-[timnvU]+")
_IGNORED = frozenset({"-bm", "-Ac", "-Am", "-G"})
_FIELD_NAME_RE = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 field name: printable ASCII except ':'
_MAX_LINE = 998  # RFC 5322: no line of a header may be longer
# "J. Doe <j@x>": obsolete syntax every reader takes as meant; a non-ASCII local part gets its own line below
_TOLERATED_DEFECTS = ("period in 'phrase'", "local-part contains non-ASCII characters)")


@dataclass
class SendmailArgs:
    """What the sendmail-style command line asked for."""

    recipients: list[str] = field(default_factory=list)
    read_recipients: bool = False  # -t
    dot_ends: bool = True  # a line holding only "." ends the message, unless -i / -oi
    envelope_from: str | None = None  # -f / -r: picks the route; the envelope sender where the sender allows it
    full_name: str | None = None  # -F
    route: str | None = None  # --route
    help: bool = False
    keep_date: bool = True  # a Date in the message is its own (False: a library's render time, stamped at hand-over)


def parse_args(argv: list[str]) -> SendmailArgs:
    """Parse sendmail's command line (getopt style: ``-fADDR`` or ``-f ADDR``, ``-oi``, ``-ti``); UsageError if bad."""
    args = SendmailArgs()
    i = 0
    options_done = False
    while i < len(argv):  # bounded: every pass consumes at least one argument
        arg = argv[i]
        i += 1
        if options_done or not arg.startswith("-") or arg == "-":
            args.recipients.append(arg)
        elif arg == "--":
            options_done = True
        elif arg == "--help":
            args.help = True
        elif arg == "--route" or arg.startswith("--route="):
            if arg == "--route":
                if i >= len(argv):
                    raise UsageError("sendmail: --route needs a route name; see 'mailops sendmail --help'")
                arg, i = f"--route={argv[i]}", i + 1
            args.route = arg.partition("=")[2]
        elif arg[:2] in _VALUE_OPTIONS:
            flag, value = arg[:2], arg[2:]
            if not value:
                if i >= len(argv):
                    raise UsageError(f"sendmail: {flag} needs a value; see 'mailops sendmail --help'")
                value, i = argv[i], i + 1
            if flag in ("-f", "-r"):
                args.envelope_from = value
            elif flag == "-F":
                args.full_name = value
        elif arg == "-oi":
            args.dot_ends = False
        elif arg.startswith("-o") or arg in _IGNORED:
            pass  # -oem, -odb, -odi ...: error and delivery modes of sendmail's own queue; ours always queues
        elif _FLAGS_RE.fullmatch(arg):
            args.read_recipients = args.read_recipients or "t" in arg
            args.dot_ends = args.dot_ends and "i" not in arg
        elif arg.startswith("-b"):
            raise UsageError(f"sendmail: {arg} is not supported: mailops sendmail only accepts mail (-bm)")
        elif arg.startswith("-q"):
            raise UsageError(f"sendmail: {arg}: run 'mailops deliver' to send what is queued")
        else:
            raise UsageError(f"sendmail: unknown option {arg!r}; see 'mailops sendmail --help'")
    return args


def read_message(stream: BinaryIO, *, dot_ends: bool) -> bytes:
    """The message on ``stream``, up to a line holding only ``.`` when ``dot_ends``; bounded in size.

    NoInputError when there is nothing; InputError when it is larger than
    MAILOPS_SENDMAIL_MAX_BYTES.
    """
    max_bytes = int(SENDMAIL_MAX_BYTES.value())
    chunks: list[bytes] = []
    total = 0
    while True:  # bounded: every pass reads at least one byte, and at most max_bytes + 1 are read
        line = stream.readline(max_bytes + 1 - total)
        if not line:
            break
        if dot_ends and line.endswith(b"\n") and line.rstrip(b"\r\n") == b".":
            break
        chunks.append(line)
        total += len(line)
        if total > max_bytes:
            raise InputError(
                f"{term(WHERE)}: the message is larger than the limit of {human_size(max_bytes)}; "
                f"send a smaller one or raise {SENDMAIL_MAX_BYTES.variable}"
            )
    data = b"".join(chunks)
    if not data.strip():
        raise NoInputError(f"{term(WHERE)}: no message; pipe one in (headers, an empty line, then the body)")
    return data


@dataclass
class _Field:
    name: str  # as written
    lines: list[bytes]  # the first line and its continuation lines, without line ends
    value: str  # unfolded value, leading space removed

    @property
    def key(self) -> str:
        return self.name.lower()


def _split(data: bytes) -> tuple[list[_Field], list[bytes]]:
    """Header fields and body lines (without line ends); InputError naming the line for a bad header."""
    lines = [line.removesuffix(b"\r") for line in data.split(b"\n")]
    if lines and lines[-1] == b"":
        lines.pop()  # the final line end
    start = 1 if lines and lines[0].startswith(b"From ") else 0  # an mbox "From " line is not a header
    fields: list[_Field] = []
    end = len(lines)
    for number in range(start, len(lines)):
        line = lines[number]
        where = f"{term(WHERE)}, line {number + 1}"
        if line == b"":
            end = number
            break
        if len(line) > _MAX_LINE:
            raise InputError(f"{where}: a header line longer than {_MAX_LINE} characters; fold it")
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise InputError(
                    f"{where}: the message starts with an indented line; start with a header (Name: value)"
                )
            fields[-1].lines.append(line)
            continue
        name, colon, _ = line.partition(b":")
        if not colon or not _FIELD_NAME_RE.fullmatch(name):
            shown = line[:60].decode("utf-8", "replace")
            raise InputError(
                f"{where}: {shown!r} is not a header (Name: value); put the headers first, then an empty line, "
                "then the body"
            )
        fields.append(_Field(name.decode("ascii"), [line], ""))
    for item in fields:
        raw = b"".join(item.lines)  # unfolding: the line breaks go, the whitespace after them stays
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{term(WHERE)}: header {item.name}: not UTF-8 text; encode it (RFC 2047)") from None
        problem = header_problem(text)
        if problem is not None:
            raise InputError(f"{term(WHERE)}: header {item.name}: {problem}")
        item.value = text.partition(":")[2].strip()
    return fields, lines[end + 1 :] if end < len(lines) else []


def _addresses(value: str, where: str) -> list[Address]:
    """Every address of an address-list header value (groups flattened), each checked by the strict parser."""
    check_header_text(value, where=where)
    header = policy.default.header_factory("To", value)
    defects = [d for d in header.defects if str(d) not in _TOLERATED_DEFECTS]
    if defects:
        raise InputError(
            f"{where}: {value!r} is not a list of addresses ({defects[0]}); write 'Name <user@example.com>, ...'"
        )
    out = []
    for addr in header.addresses:
        if not addr.username.isascii():
            raise InputError(
                f"{where}: {addr.addr_spec!r}: non-ASCII characters before the @ need SMTPUTF8, which mailops does "
                "not use; write an ASCII address"
            )
        checked = parse_address(addr.addr_spec, where=where, display_name=False)
        out.append(make_address(addr.display_name, checked.addr_spec))
    return out


def _unique(addresses: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        if address.casefold() not in seen:
            seen.add(address.casefold())
            out.append(address)
    return out


def _field_bytes(item: _Field) -> bytes:
    """The field as it goes out: as written when it is ASCII, else encoded (RFC 2047 / 2231), addresses kept."""
    if item.value.isascii():
        return b"\r\n".join(item.lines)
    where = f"{term(WHERE)}: header {item.name}"
    addresses = _addresses(item.value, where) if item.key in ADDRESS_FIELDS else None
    return encode_field(item.name, item.value, addresses, where=where)


def _envelope(config_sender: Sender, args: SendmailArgs) -> tuple[str, str | None]:
    """The envelope sender (MAIL FROM) and, when ``-f`` asked for another one that cannot be used, why not.

    ``-f ADDR`` is the envelope sender, as in sendmail and msmtp, where the
    sender may use it: a relay that does not log in (``auth: false``) takes
    any, as an MTA would (``-f '<>'`` is the null sender of notifications).
    A mailbox that logs in (Gmail, Microsoft 365, most providers) sends only
    as itself; there the envelope stays the sender's own address.
    """
    asked = args.envelope_from
    own = config_sender.email
    if asked is None:
        return own, None
    asked = asked.strip().strip("<>")
    if asked.casefold() == own.casefold():
        return own, None
    if not config_sender.auth:
        return asked, None
    shown = asked or "<>"
    return own, (
        f"{term('-f')} {shown} not used as the envelope sender: "
        f"sender {config_sender.key} logs in and sends only as {own}"
    )


def _header(name: str, value: str) -> _Field:
    return _Field(name, [f"{name}: {value}".encode("ascii")], value)


def _is_utf8(lines: list[bytes]) -> bool:
    try:
        b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fit_long_lines(body: list[bytes], fields: list[_Field]) -> tuple[list[bytes], list[_Field]]:
    """Body and headers with no body line over 998 characters, which SMTP servers refuse.

    Cron mails whatever a job prints, a long JSON log line included: a
    single-part body holding such a line is sent quoted-printable (the text
    arrives unchanged once decoded). A multipart body, or one already encoded,
    is refused: its parts are not ours to re-encode.
    """
    if all(len(line) <= _MAX_LINE for line in body):
        return body, fields
    values = {f.key: f.value.lower() for f in fields}
    if values.get("content-type", "").startswith("multipart/") or values.get(
        "content-transfer-encoding", "7bit"
    ) not in (
        "7bit",
        "8bit",
        "binary",
    ):
        raise InputError(
            f"{term(WHERE)}: a body line is longer than {_MAX_LINE} characters in a multipart or encoded message; "
            "encode that part as quoted-printable or base64"
        )
    encoded = quopri.encodestring(b"\n".join(body) + b"\n").split(b"\n")[:-1]
    kept = [f for f in fields if f.key != "content-transfer-encoding"]
    if "mime-version" not in values:
        kept.append(_header("MIME-Version", "1.0"))
    if "content-type" not in values and not all(line.isascii() for line in body) and _is_utf8(body):
        kept.append(_header("Content-Type", 'text/plain; charset="utf-8"'))
    kept.append(_header("Content-Transfer-Encoding", "quoted-printable"))
    return encoded, kept


def _route(config: Config, args: SendmailArgs, from_addr: str | None) -> Plan:
    """``--route``; else the ``sendmail: from:`` entry of the envelope sender or From address (or its
    ``@domain``); else ``sendmail: default``; else the ``default`` route."""
    if args.route:
        return routing.resolve(config, args.route, None)
    mapping = config.sendmail.by_address
    for address in (args.envelope_from, from_addr):
        if not address:
            continue
        address = address.strip().strip("<>").lower()
        for key in (address, "@" + address.rpartition("@")[2]):
            if key in mapping:
                return routing.resolve(config, mapping[key], None)
    if config.sendmail.default:
        return routing.resolve(config, config.sendmail.default, None)
    if routing.DEFAULT_ROUTE not in config.routes:
        raise ConfigError(
            f"{config.path}: no route for mail from sendmail: add 'sendmail: {{default: ROUTE}}' or a 'default' "
            f"route, or pass {term('--route')}"
        )
    return routing.resolve(config, None, None)


@dataclass
class Accepted:
    """A message ``accept`` took: its run (for delivery), Message-ID and what mailops changed or left out."""

    run_id: str
    message_id: str
    plan: Plan
    notes: list[str]
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (recipient, reason) left out
    queued: bool = True  # False: every recipient is on the suppression list, nothing was queued


def build(config: Config, args: SendmailArgs, data: bytes, now: datetime) -> tuple[Plan, PreparedMessage, list[str]]:
    """Check the message and turn it into a prepared outbox message; InputError/UsageError for bad input.

    Returns the route plan, the message and notes on what was changed (a From rewrite).
    """
    fields, body = _split(data)
    froms = [f for f in fields if f.key == "from"]
    if len(froms) > 1:
        raise InputError(f"{term(WHERE)}: {len(froms)} From headers; a message has one")
    from_name, from_addr = parseaddr(froms[0].value) if froms else ("", "")
    try:
        from_list = _addresses(froms[0].value, f"{term(WHERE)}: header From") if froms else []
    except InputError:
        from_list = []  # cron writes "root@web1" or "root": not a mailbox to send as, so From is rewritten below
    if args.envelope_from not in (None, "", "<>"):
        assert args.envelope_from is not None
        try:
            parse_address(args.envelope_from.strip().strip("<>"), where=term("-f"), display_name=False)
        except InputError as exc:
            raise UsageError(str(exc)) from None
    if args.full_name is not None:
        try:
            check_header_text(args.full_name, where=term("-F"))
        except InputError as exc:
            raise UsageError(str(exc)) from None

    recipients: list[str] = []
    for number, arg in enumerate(args.recipients, 1):
        try:
            recipients.extend(a.addr_spec for a in _addresses(arg, f"{term('recipient argument')} {number}"))
        except InputError as exc:
            raise UsageError(str(exc)) from None
    if args.read_recipients:
        for item in fields:
            if item.key in ("to", "cc", "bcc") and item.value:
                recipients.extend(a.addr_spec for a in _addresses(item.value, f"{term(WHERE)}: header {item.name}"))
    recipients = _unique(recipients)
    if not recipients:
        where = "the arguments or the To, Cc and Bcc headers" if args.read_recipients else "the arguments"
        raise UsageError(f"sendmail: no recipients in {where}; name them as arguments, or pass -t to read the headers")

    plan = _route(config, args, from_addr or None)
    sender = config.senders[plan.nominal]

    kept = [f for f in fields if f.key != "bcc"]  # Bcc never travels with the message
    body, kept = _fit_long_lines(body, kept)
    keys = {f.key for f in kept}
    extra: list[str] = []
    if "to" not in keys and "cc" not in keys:
        extra.append("To: undisclosed-recipients:;")
    if "date" not in keys:
        extra.append(f"Date: {format_datetime(now)}")
    message_id = next((f.value for f in kept if f.key == "message-id"), None)
    if not message_id:
        message_id = make_message_id(sender.domain)
        extra.append(f"Message-ID: {message_id}")
    subject_field = next((f for f in kept if f.key == "subject"), None)
    # raw UTF-8 from a script (a Subject, a display name, an X- header): encoded as mailops encodes its own
    head = [_field_bytes(f) for f in kept]
    head.extend(line.encode("ascii") for line in extra)
    mime = b"\r\n".join(head) + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in body)

    envelope_from, unused = _envelope(sender, args)
    notes: list[str] = []  # recorded as events
    changes: list[str] = [unused] if unused else []  # shown with every log row of the message
    # A mailbox that logs in sends only as itself; a relay (auth: false) takes the From the message has.
    own = len(from_list) == 1 and (from_list[0].addr_spec.casefold() == sender.email.casefold() or not sender.auth)
    if not own:
        name = args.full_name or from_name or sender.display_name or ""
        check_header_text(name, where=f"{term(WHERE)}: header From")
        address = envelope_from if not sender.auth and envelope_from else sender.email
        mime = rewrite_sender(mime, from_addr=make_address(name, address), reply_to=None, envelope_from=address)
        if froms:
            route = f"route {plan.route or plan.nominal}"
            why = (
                f"sender {sender.key} of {route} sends only as its own address"
                if sender.auth
                else f"not one address (sender {sender.key} of {route})"
            )
            notes.append(f"sendmail: message {message_id}: From {froms[0].value!r} rewritten to {address}: {why}")
            changes.insert(0, f"From {froms[0].value!r} rewritten to {address}: {why}")

    subject = str(policy.default.header_factory("Subject", subject_field.value)) if subject_field else ""
    to_header = ", ".join(f.value for f in kept if f.key == "to") or "undisclosed-recipients:;"
    prepared = PreparedMessage(
        row=None,
        label=term(WHERE),
        email=PreparedEmail(
            skeleton=mime,
            envelope_from=envelope_from,
            envelope_to=recipients,
            subject=subject,
            message_id=message_id,
            to_header=to_header,
        ),
        template=None,
        dedup_key=hashlib.sha256(mime).hexdigest(),
        keep_date=args.keep_date and "date" in keys,
        note="; ".join(changes) or None,
    )
    return plan, prepared, notes


def accept(
    config: Config, store: Store, args: SendmailArgs, data: bytes, *, now: float, include_suppressed: bool = False
) -> Accepted:
    """Check ``data``, queue it in the outbox (due now) and record any From rewrite as an event.

    Recipients on the suppression list are left out of the envelope, as ``send`` leaves them out (unless
    ``include_suppressed``); a message none of whose recipients is left is not queued (``queued`` false).
    """
    from .history import record_event
    from .sending import _row  # the one shape of an outbox row, shared with `send`

    plan, prepared, notes = build(config, args, data, datetime.fromtimestamp(now, config.timezone))
    from .sending import announced_sizes, message_problem

    # As for `send`: a message no sender of the route could ever take (max_message_size, or more recipients
    # than a recipient-counted limit) is refused now rather than left to fail or wait for ever.
    active = [config.senders[k] for k in plan.candidates if config.senders[k].active]
    with store.read() as conn:
        server_sizes = announced_sizes(conn, active)
    problem = message_problem(prepared, active, server_sizes)
    if problem is not None:
        raise InputError(problem)
    run_id = uuid.uuid4().hex
    mail = prepared.email
    suppressed: list[tuple[str, str]] = []
    if not include_suppressed:
        from . import suppress

        with store.read() as conn:
            listed = suppress.lookup(conn, mail.envelope_to)
        suppressed = [(rcpt, listed[key]) for rcpt in mail.envelope_to if (key := suppress.key(rcpt)) in listed]
        if suppressed:
            left = [rcpt for rcpt in mail.envelope_to if suppress.key(rcpt) not in listed]
            prepared.email = mail = dataclasses.replace(mail, envelope_to=left)
            prepared.suppressed = suppressed
    if not mail.envelope_to:
        return Accepted(run_id, mail.message_id, plan, notes, suppressed, queued=False)
    prepared.include_suppressed = include_suppressed
    outbox = Outbox(store, config.delivery)
    outbox.stage([_row(prepared, plan, run_id, None, now)])
    outbox.promote(run_id, now)
    for note in notes:
        record_event(store, "sendmail", note, now)
    return Accepted(run_id=run_id, message_id=mail.message_id, plan=plan, notes=notes, suppressed=suppressed)
